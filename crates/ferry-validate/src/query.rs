//! `query`: a PromQL expression, asked of Ferry's own metrics store (its
//! Prometheus-compatible API) or of a Prometheus, whose every value must be
//! within `min`..`max`.

use crate::{Context, Finding};
use ferry_core::validation::CheckSpec;

pub(crate) async fn run(check: &CheckSpec, ctx: &Context) -> Finding {
    let Some(query) = check.query.as_deref() else {
        return Finding::fail(None, "no query");
    };
    let (base, token) = match (&check.prometheus, &ctx.metrics_api) {
        (Some(url), _) => (url.trim_end_matches('/').to_string(), None),
        (None, Some((url, token))) => (url.trim_end_matches('/').to_string(), Some(token.clone())),
        (None, None) => {
            return Finding::fail(
                None,
                "no metrics to ask: Ferry's daemon is not running here (start `ferry serve`) and the check names no `prometheus`",
            );
        }
    };
    let url = format!("{base}/api/v1/query");
    let mut req = ctx.http.get(&url).query(&[("query", query)]);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Finding::fail(None, format!("cannot ask {url}: {e}")),
    };
    let status = resp.status();
    let body: serde_json::Value = match resp.json().await {
        Ok(b) => b,
        Err(e) => return Finding::fail(None, format!("{url} answered {status} without JSON: {e}")),
    };
    if body["status"] != "success" {
        let why = body["error"].as_str().unwrap_or("no reason given");
        return Finding::fail(None, format!("the query failed ({status}): {why}"));
    }
    let values = match samples(&body["data"]) {
        Ok(v) => v,
        Err(e) => return Finding::fail(None, e),
    };
    judge(check, query, &values)
}

/// `(labels as Prometheus prints them, value)` of an instant query's
/// result.
fn samples(data: &serde_json::Value) -> Result<Vec<(String, f64)>, String> {
    let number = |v: &serde_json::Value| -> Option<f64> { v.get(1)?.as_str()?.parse::<f64>().ok() };
    match data["resultType"].as_str() {
        Some("scalar") => Ok(vec![(
            String::new(),
            number(&data["result"]).ok_or("a scalar without a value")?,
        )]),
        Some("vector") => {
            let mut out = Vec::new();
            for s in data["result"].as_array().into_iter().flatten() {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        let parts: Vec<String> = m
                            .iter()
                            .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                            .collect();
                        format!("{{{}}}", parts.join(", "))
                    })
                    .unwrap_or_default();
                out.push((
                    labels,
                    number(&s["value"]).ok_or("a sample without a value")?,
                ));
            }
            Ok(out)
        }
        other => Err(format!(
            "the query returned a {}; a check needs an instant vector or a scalar",
            other.unwrap_or("nothing")
        )),
    }
}

fn judge(check: &CheckSpec, query: &str, values: &[(String, f64)]) -> Finding {
    if values.is_empty() {
        let reason = format!("`{query}` returned no series");
        return match check.empty.as_deref() {
            Some("pass") => Finding::pass(Some("no series".into()), reason),
            Some("skip") => Finding::skip(reason),
            _ => Finding::fail(
                Some("no series".into()),
                format!("{reason} (set empty = \"pass\" if that is fine)"),
            ),
        };
    }
    let shown = |v: f64| format!("{v}");
    let value = if values.len() == 1 {
        shown(values[0].1)
    } else {
        let max = values.iter().map(|v| v.1).fold(f64::NEG_INFINITY, f64::max);
        format!("{} series, max {}", values.len(), shown(max))
    };
    for (labels, v) in values {
        let at = if labels.is_empty() || labels == "{}" {
            String::new()
        } else {
            format!("{labels} ")
        };
        if let Some(min) = check.min
            && (*v < min || v.is_nan())
        {
            return Finding::fail(
                Some(value),
                format!("`{query}`: {at}= {} is below min {min}", shown(*v)),
            );
        }
        if let Some(max) = check.max
            && (*v > max || v.is_nan())
        {
            return Finding::fail(
                Some(value),
                format!("`{query}`: {at}= {} is above max {max}", shown(*v)),
            );
        }
    }
    let bounds = match (check.min, check.max) {
        (Some(a), Some(b)) => format!("within {a}..{b}"),
        (Some(a), None) => format!("at least {a}"),
        (None, Some(b)) => format!("at most {b}"),
        (None, None) => "unbounded".into(),
    };
    Finding::pass(Some(value), format!("`{query}`: every value {bounds}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::validation::{CheckKind, Status};

    #[test]
    fn bounds_and_empty_results() {
        let mut c = CheckSpec::new("q", CheckKind::Query);
        c.max = Some(0.05);
        let data = serde_json::json!({"resultType":"vector","result":[
            {"metric":{"job":"web"},"value":[1.0,"0.01"]},
            {"metric":{"job":"api"},"value":[1.0,"0.07"]}]});
        let v = samples(&data).unwrap();
        let f = judge(&c, "err", &v);
        assert_eq!(f.status, Status::Failed);
        assert_eq!(f.reason, "`err`: {job=\"api\"} = 0.07 is above max 0.05");
        assert_eq!(f.value.as_deref(), Some("2 series, max 0.07"));
        c.max = Some(0.1);
        assert_eq!(judge(&c, "err", &v).status, Status::Passed);
        let scalar =
            samples(&serde_json::json!({"resultType":"scalar","result":[1.0,"3"]})).unwrap();
        c.min = Some(5.0);
        assert_eq!(judge(&c, "s", &scalar).reason, "`s`: = 3 is below min 5");
        assert_eq!(judge(&c, "e", &[]).status, Status::Failed);
        c.empty = Some("skip".into());
        assert_eq!(judge(&c, "e", &[]).status, Status::Skipped);
        assert!(samples(&serde_json::json!({"resultType":"matrix","result":[]})).is_err());
    }
}
