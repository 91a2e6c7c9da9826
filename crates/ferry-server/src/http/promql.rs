//! Prometheus's query API over the daemon's time-series store, as
//! Grafana's Prometheus data source calls it: `/api/v1/query` and
//! `/api/v1/query_range`, by GET with a query string or POST with a form,
//! answered in Prometheus's envelope (`{"status": "success", "data": ...}`
//! or `{"status": "error", "errorType": ..., "error": ...}`).

use crate::daemon::Daemon;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_metrics::storage::Labels;
use ferry_metrics::{EvalError, Value};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use std::sync::Arc;

/// Most points a range query may return per series (Prometheus's limit).
const MAX_POINTS: i64 = 11_000;

#[derive(Debug, Deserialize)]
pub struct InstantParams {
    query: Option<String>,
    time: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RangeParams {
    query: Option<String>,
    start: Option<String>,
    end: Option<String>,
    step: Option<String>,
}

pub async fn query_get(State(d): State<Arc<Daemon>>, Query(p): Query<InstantParams>) -> Response {
    instant(d, p).await
}

pub async fn query_post(State(d): State<Arc<Daemon>>, Form(p): Form<InstantParams>) -> Response {
    instant(d, p).await
}

pub async fn range_get(State(d): State<Arc<Daemon>>, Query(p): Query<RangeParams>) -> Response {
    range(d, p).await
}

pub async fn range_post(State(d): State<Arc<Daemon>>, Form(p): Form<RangeParams>) -> Response {
    range(d, p).await
}

async fn instant(d: Arc<Daemon>, p: InstantParams) -> Response {
    let Some(query) = p.query.filter(|q| !q.trim().is_empty()) else {
        return bad_data("invalid parameter \"query\": missing or empty");
    };
    let t = match p.time.as_deref() {
        None | Some("") => d.clock.now() as i64,
        Some(s) => match parse_time(s) {
            Ok(t) => t,
            Err(e) => return bad_data(&format!("invalid parameter \"time\": {e}")),
        },
    };
    // Queries read blocks from disk: off the async workers.
    let result = tokio::task::spawn_blocking(move || d.tsdb.instant(&query, t)).await;
    match result {
        Ok(Ok(v)) => encoded(&v, t),
        Ok(Err(e)) => eval_error(e),
        Err(e) => eval_error(EvalError::Eval(format!("the query failed: {e}"))),
    }
}

async fn range(d: Arc<Daemon>, p: RangeParams) -> Response {
    let Some(query) = p.query.filter(|q| !q.trim().is_empty()) else {
        return bad_data("invalid parameter \"query\": missing or empty");
    };
    let param = |name: &str, v: Option<String>| -> Result<String, String> {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| format!("invalid parameter \"{name}\": missing"))
    };
    let parsed = (|| {
        let start = parse_time(&param("start", p.start)?)
            .map_err(|e| format!("invalid parameter \"start\": {e}"))?;
        let end = parse_time(&param("end", p.end)?)
            .map_err(|e| format!("invalid parameter \"end\": {e}"))?;
        let step = parse_step(&param("step", p.step)?)
            .map_err(|e| format!("invalid parameter \"step\": {e}"))?;
        Ok::<_, String>((start, end, step))
    })();
    let (start, end, step) = match parsed {
        Ok(v) => v,
        Err(message) => return bad_data(&message),
    };
    if end < start {
        return bad_data("end timestamp must not be before start time");
    }
    if step <= 0 {
        return bad_data(
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        );
    }
    if (end - start) / step > MAX_POINTS {
        return bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        );
    }
    let result = tokio::task::spawn_blocking(move || d.tsdb.range(&query, start, end, step)).await;
    match result {
        Ok(Ok(v)) => encoded(&v, end),
        Ok(Err(e)) => eval_error(e),
        Err(e) => eval_error(EvalError::Eval(format!("the query failed: {e}"))),
    }
}

/// A Unix time in seconds (fractions allowed) or RFC 3339, in ms.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() {
            return Err(format!("cannot parse {s:?} to a valid timestamp"));
        }
        return Ok((secs * 1000.0).round() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        })
        .map_err(|_| format!("cannot parse {s:?} to a valid timestamp"))
}

/// Seconds (fractions allowed) or a duration such as `15s` or `1m`, in ms.
fn parse_step(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() {
            return Err(format!("cannot parse {s:?} to a valid duration"));
        }
        return Ok((secs * 1000.0).round() as i64);
    }
    ferry_core::duration::parse(s)
        .map(|d| d.0.as_millis() as i64)
        .map_err(|_| format!("cannot parse {s:?} to a valid duration"))
}

fn success(data: Json) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({ "status": "success", "data": data })),
    )
        .into_response()
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "status": "error", "errorType": kind, "error": message })),
    )
        .into_response()
}

fn bad_data(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_data", message)
}

fn eval_error(e: EvalError) -> Response {
    match e {
        EvalError::Parse(m) => bad_data(&m),
        EvalError::Eval(m) => error(StatusCode::UNPROCESSABLE_ENTITY, "execution", &m),
    }
}

/// Seconds with up to millisecond precision, as Prometheus writes them.
/// A sample value as Prometheus writes it: a string.
fn value_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn metric(l: &Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

/// A query's result in Prometheus's envelope, serialized straight from the
/// evaluator's value (no intermediate JSON tree: a result can hold tens of
/// thousands of series).
fn encoded(v: &Value, t: i64) -> Response {
    (
        StatusCode::OK,
        axum::Json(Envelope {
            status: "success",
            data: Data(v, t),
        }),
    )
        .into_response()
}

#[derive(serde::Serialize)]
struct Envelope<'a> {
    status: &'static str,
    data: Data<'a>,
}

/// `data` of a query answer: `resultType` and `result`.
struct Data<'a>(&'a Value, i64);

/// `[seconds, "value"]`.
struct Point(i64, f64);

impl serde::Serialize for Point {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&(self.0 as f64 / 1000.0))?;
        t.serialize_element(&value_text(self.1))?;
        t.end()
    }
}

#[derive(serde::Serialize)]
struct VectorItem<'a> {
    metric: &'a Labels,
    value: Point,
}

#[derive(serde::Serialize)]
struct MatrixItem<'a> {
    metric: &'a Labels,
    values: Points<'a>,
}

struct Points<'a>(&'a [(i64, f64)]);

impl serde::Serialize for Points<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|&(t, v)| Point(t, v)))
    }
}

impl serde::Serialize for Data<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        match self.0 {
            Value::Scalar(f) => {
                m.serialize_entry("resultType", "scalar")?;
                m.serialize_entry("result", &Point(self.1, *f))?;
            }
            Value::String(text) => {
                m.serialize_entry("resultType", "string")?;
                m.serialize_entry("result", &(self.1 as f64 / 1000.0, text))?;
            }
            Value::Vector(samples) => {
                m.serialize_entry("resultType", "vector")?;
                let items: Vec<VectorItem> = samples
                    .iter()
                    .map(|x| VectorItem {
                        metric: &x.labels,
                        value: Point(x.t, x.v),
                    })
                    .collect();
                m.serialize_entry("result", &items)?;
            }
            Value::Matrix(series) => {
                m.serialize_entry("resultType", "matrix")?;
                let items: Vec<MatrixItem> = series
                    .iter()
                    .map(|x| MatrixItem {
                        metric: &x.labels,
                        values: Points(&x.points),
                    })
                    .collect();
                m.serialize_entry("result", &items)?;
            }
        }
        m.end()
    }
}

/// Form or query-string pairs; keys may repeat (`match[]`).
fn pairs(raw: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(raw).unwrap_or_default()
}

/// The `match[]`, `start` and `end` of a metadata request (GET query
/// string or POST form), the range defaulting to the whole retention.
fn selection(d: &Daemon, raw: &str) -> Result<(Vec<String>, i64, i64), String> {
    let p = pairs(raw);
    let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let now = d.clock.now() as i64;
    let start = match get("start").filter(|s| !s.is_empty()) {
        Some(s) => parse_time(&s).map_err(|e| format!("invalid parameter \"start\": {e}"))?,
        None => i64::MIN / 2,
    };
    let end = match get("end").filter(|s| !s.is_empty()) {
        Some(s) => parse_time(&s).map_err(|e| format!("invalid parameter \"end\": {e}"))?,
        None => now,
    };
    let matches = p
        .iter()
        .filter(|(k, _)| k == "match[]")
        .map(|(_, v)| v.clone())
        .collect();
    Ok((matches, start, end))
}

fn raw_of(query: Option<String>, body: &axum::body::Bytes) -> String {
    let mut raw = query.unwrap_or_default();
    if !body.is_empty() {
        if !raw.is_empty() {
            raw.push('&');
        }
        raw.push_str(&String::from_utf8_lossy(body));
    }
    raw
}

/// The series a metadata request selects (`match[]`, `start`, `end`);
/// `require_match`: `/api/v1/series` needs at least one selector.
fn selected(
    d: &Daemon,
    raw: &str,
    require_match: bool,
) -> Result<std::collections::BTreeSet<Labels>, Box<Response>> {
    let (matches, start, end) = selection(d, raw).map_err(|e| Box::new(bad_data(&e)))?;
    if require_match && matches.is_empty() {
        return Err(Box::new(bad_data("no match[] parameter provided")));
    }
    d.tsdb
        .series(&matches, start, end)
        .map_err(|e| Box::new(eval_error(e)))
}

/// `/api/v1/series`: the label sets of the matching series.
pub async fn series(
    State(d): State<Arc<Daemon>>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
    body: axum::body::Bytes,
) -> Response {
    match selected(&d, &raw_of(q, &body), true) {
        Ok(set) => success(Json::Array(set.iter().map(metric).collect())),
        Err(r) => *r,
    }
}

/// `/api/v1/labels`: every label name of the matching series.
pub async fn labels(
    State(d): State<Arc<Daemon>>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
    body: axum::body::Bytes,
) -> Response {
    match selected(&d, &raw_of(q, &body), false) {
        Ok(set) => {
            let names: std::collections::BTreeSet<&String> =
                set.iter().flat_map(|l| l.keys()).collect();
            success(json!(names))
        }
        Err(r) => *r,
    }
}

/// `/api/v1/label/{name}/values`.
pub async fn label_values(
    State(d): State<Arc<Daemon>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    match selected(&d, &q.unwrap_or_default(), false) {
        Ok(set) => {
            let values: std::collections::BTreeSet<&String> =
                set.iter().filter_map(|l| l.get(&name)).collect();
            success(json!(values))
        }
        Err(r) => *r,
    }
}

/// `/api/v1/metadata`: each family's type and help.
pub async fn metadata(State(d): State<Arc<Daemon>>) -> Response {
    let data: serde_json::Map<String, Json> = d
        .tsdb
        .metadata()
        .into_iter()
        .map(|(name, m)| {
            (
                name,
                json!([{ "type": m.kind, "help": m.help, "unit": "" }]),
            )
        })
        .collect();
    success(Json::Object(data))
}

/// `/api/v1/status/buildinfo`.
pub async fn buildinfo() -> Response {
    success(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "ferry",
        "buildDate": "",
        "goVersion": "",
    }))
}

/// `/api/v1/query_exemplars`: no exemplars are stored.
pub async fn exemplars() -> Response {
    success(json!([]))
}
