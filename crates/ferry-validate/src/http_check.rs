//! `http`, `security_headers` and `auth`: requests to a service (through
//! its proxy, or to one revision with `X-Ferry-Revision`) or to any URL.

use crate::{Context, Finding};
use ferry_core::validation::spec::defaults;
use ferry_core::validation::{CheckSpec, StatusExpect, SuiteSpec};
use std::collections::BTreeMap;
use std::time::Instant;

/// The most of a body a check reads.
const MAX_BODY: usize = 1 << 20;

/// What came back.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
    latency_ms: f64,
}

/// Send the check's request with `headers` (values expanded); an error is
/// the reason the request got no answer.
async fn send(
    check: &CheckSpec,
    suite: &SuiteSpec,
    ctx: &Context,
    headers: &BTreeMap<String, String>,
) -> Result<(Answer, String), String> {
    let (url, proxied) = ctx.target(check, suite)?;
    let method = check.method.as_deref().unwrap_or("GET");
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("\"{method}\" is not an HTTP method"))?;
    let mut req = ctx.http.request(method.clone(), &url);
    if proxied && let Some(rev) = ctx.revision {
        req = req.header("X-Ferry-Revision", rev.to_string());
    }
    for (name, value) in headers {
        req = req.header(name.as_str(), ctx.expand(value));
    }
    if let Some(body) = &check.body {
        req = req.body(ctx.expand(body));
    }
    let shown = format!("{method} {url}");
    let started = Instant::now();
    let mut resp = req
        .send()
        .await
        .map_err(|e| format!("{shown}: {}", describe(&e)))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body: Vec<u8> = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => return Err(format!("{shown}: the body broke off: {}", describe(&e))),
        }
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok((
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            latency_ms,
        },
        shown,
    ))
}

/// reqwest's error with its causes, which say what actually happened
/// (connection refused, certificate invalid).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    let mut last = String::new();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    if !last.is_empty() {
        text.push_str(": ");
        text.push_str(&last);
    }
    text
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

pub(crate) async fn http(check: &CheckSpec, suite: &SuiteSpec, ctx: &Context) -> Finding {
    let (answer, shown) = match send(check, suite, ctx, &check.headers).await {
        Ok(a) => a,
        Err(e) => return Finding::fail(None, e),
    };
    let value = Some(format!("{} in {}", answer.status, ms(answer.latency_ms)));
    let problems = judge_http(check, &answer);
    if problems.is_empty() {
        Finding::pass(value, format!("{shown} answered as expected"))
    } else {
        Finding::fail(value, format!("{shown}: {}", problems.join("; ")))
    }
}

/// What is wrong with an answer, one phrase each.
fn judge_http(check: &CheckSpec, a: &Answer) -> Vec<String> {
    let mut problems = Vec::new();
    let expect = check
        .expect_status
        .clone()
        .unwrap_or_else(|| StatusExpect::Class("2xx".into()));
    if !expect.accepts(a.status) {
        problems.push(format!("expected status {expect}, got {}", a.status));
    }
    if let Some(max) = check.max_latency {
        let max_ms = max.0.as_secs_f64() * 1000.0;
        if a.latency_ms > max_ms {
            problems.push(format!(
                "took {}, more than max_latency {max}",
                ms(a.latency_ms)
            ));
        }
    }
    if let Some(want) = &check.expect_body
        && !a.body.contains(want.as_str())
    {
        problems.push(format!(
            "the body does not contain \"{want}\"{}",
            excerpt(&a.body)
        ));
    }
    if let Some(re) = &check.expect_body_regex {
        match regex::Regex::new(re) {
            Ok(r) if !r.is_match(&a.body) => problems.push(format!(
                "the body does not match /{re}/{}",
                excerpt(&a.body)
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("/{re}/ is not a regular expression: {e}")),
        }
    }
    if !check.expect_json.is_empty() {
        match serde_json::from_str::<serde_json::Value>(&a.body) {
            Err(e) => problems.push(format!("the body is not JSON ({e}){}", excerpt(&a.body))),
            Ok(doc) => {
                for (path, want) in &check.expect_json {
                    match json_field(&doc, path) {
                        None => problems.push(format!("the JSON has no field `{path}`")),
                        Some(got) if !json_equal(got, want) => {
                            problems.push(format!("JSON `{path}` is {got}, expected {want}"))
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    for (name, want) in &check.expect_headers {
        match a
            .headers
            .get(name.as_str())
            .map(|v| v.to_str().unwrap_or(""))
        {
            None => problems.push(format!("no `{name}` header")),
            Some(got) if want != "*" && got != want => {
                problems.push(format!("header `{name}` is \"{got}\", expected \"{want}\""))
            }
            Some(_) => {}
        }
    }
    problems
}

/// The start of a body, to show next to a mismatch.
fn excerpt(body: &str) -> String {
    let t: String = body.trim().chars().take(80).collect();
    if t.is_empty() {
        " (it is empty)".into()
    } else {
        format!(" (it starts \"{t}\")")
    }
}

/// A field by dotted path (`db.ok`, `items.0.id`) or JSON pointer
/// (`/db/ok`).
fn json_field<'a>(doc: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    if path.starts_with('/') {
        return doc.pointer(path);
    }
    let mut at = doc;
    for part in path.split('.') {
        at = match at {
            serde_json::Value::Object(m) => m.get(part)?,
            serde_json::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Equal, with numbers compared as numbers (`1` equals `1.0`).
fn json_equal(got: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (got.as_f64(), want.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => got == want,
    }
}

/// The header names (lower case) `security_headers` asks for.
fn required_headers(check: &CheckSpec, https: bool) -> Vec<String> {
    match &check.require {
        Some(list) => list.iter().map(|h| h.to_ascii_lowercase()).collect(),
        None => {
            let mut list: Vec<String> = Vec::new();
            if https {
                list.push("strict-transport-security".into());
            }
            list.extend(defaults::SECURITY_HEADERS.iter().map(|h| h.to_string()));
            list
        }
    }
}

/// A header's usual capitalisation, for messages.
fn display_name(lower: &str) -> String {
    match lower {
        "x-content-type-options" => "X-Content-Type-Options".into(),
        "content-security-policy" => "Content-Security-Policy".into(),
        "x-frame-options" => "X-Frame-Options".into(),
        "referrer-policy" => "Referrer-Policy".into(),
        "strict-transport-security" => "Strict-Transport-Security".into(),
        "permissions-policy" => "Permissions-Policy".into(),
        other => other
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-"),
    }
}

pub(crate) async fn security_headers(
    check: &CheckSpec,
    suite: &SuiteSpec,
    ctx: &Context,
) -> Finding {
    let (answer, shown) = match send(check, suite, ctx, &check.headers).await {
        Ok(a) => a,
        Err(e) => return Finding::fail(None, e),
    };
    let https = shown.contains("https://");
    let required = required_headers(check, https);
    let problems = judge_security(&required, &answer.headers);
    let value = Some(format!(
        "{}/{} present",
        required.len() - problems.len(),
        required.len()
    ));
    if problems.is_empty() {
        Finding::pass(
            value,
            format!(
                "{shown} carries {}",
                required
                    .iter()
                    .map(|h| display_name(h))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else {
        Finding::fail(value, format!("{shown}: {}", problems.join("; ")))
    }
}

/// What is missing or wrong, one phrase per header.
fn judge_security(required: &[String], headers: &reqwest::header::HeaderMap) -> Vec<String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let mut problems = Vec::new();
    for name in required {
        let shown = display_name(name);
        match (name.as_str(), get(name)) {
            // A CSP with frame-ancestors does X-Frame-Options' job.
            ("x-frame-options", None)
                if get("content-security-policy")
                    .is_some_and(|c| c.contains("frame-ancestors")) => {}
            (_, None) => problems.push(format!("missing {shown}")),
            ("x-content-type-options", Some(v)) if !v.eq_ignore_ascii_case("nosniff") => {
                problems.push(format!("{shown} is \"{v}\", not \"nosniff\""))
            }
            ("strict-transport-security", Some(v)) => {
                let max_age = v
                    .split(';')
                    .filter_map(|p| p.trim().strip_prefix("max-age="))
                    .filter_map(|n| n.trim_matches('"').parse::<u64>().ok())
                    .next();
                if max_age.is_none_or(|a| a == 0) {
                    problems.push(format!("{shown} has no positive max-age (\"{v}\")"));
                }
            }
            _ => {}
        }
    }
    problems
}

pub(crate) async fn auth(check: &CheckSpec, suite: &SuiteSpec, ctx: &Context) -> Finding {
    let refused = |s: u16| s == 401 || s == 403;
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    let bad = check.bad_headers.clone().unwrap_or_default();
    let shown_url;
    match send(check, suite, ctx, &bad).await {
        Err(e) => return Finding::fail(None, e),
        Ok((a, shown)) => {
            shown_url = shown;
            seen.push(format!("{} without credentials", a.status));
            if !refused(a.status) {
                let what = if bad.is_empty() {
                    "without credentials"
                } else {
                    "with bad credentials"
                };
                problems.push(format!(
                    "a request {what} got {}, expected 401 or 403",
                    a.status
                ));
            }
        }
    }
    if let Some(good) = &check.good_headers {
        match send(check, suite, ctx, good).await {
            Err(e) => return Finding::fail(None, e),
            Ok((a, _)) => {
                seen.push(format!("{} with credentials", a.status));
                if refused(a.status) || a.status >= 500 {
                    problems.push(format!(
                        "a request with good credentials got {}, expected to be let in",
                        a.status
                    ));
                }
            }
        }
    }
    let value = Some(seen.join(", "));
    if problems.is_empty() {
        Finding::pass(
            value,
            format!(
                "{shown_url} refuses requests without credentials{}",
                if check.good_headers.is_some() {
                    " and lets good ones in"
                } else {
                    ""
                }
            ),
        )
    } else {
        Finding::fail(value, format!("{shown_url}: {}", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::validation::CheckKind;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn answer(status: u16, body: &str, headers: &[(&'static str, &str)]) -> Answer {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Answer {
            status,
            headers: h,
            body: body.into(),
            latency_ms: 5.0,
        }
    }

    #[test]
    fn http_judges_status_body_json_headers_and_latency() {
        let mut c = CheckSpec::new("api", CheckKind::Http);
        let ok = answer(
            200,
            r#"{"status":"ok","db":{"up":true},"items":[{"id":7}]}"#,
            &[("content-type", "application/json")],
        );
        assert!(judge_http(&c, &ok).is_empty());
        assert_eq!(
            judge_http(&c, &answer(500, "", &[])),
            vec!["expected status 2xx, got 500"]
        );
        c.expect_status = Some(StatusExpect::Many(vec![200, 204]));
        c.expect_body = Some("\"ok\"".into());
        c.expect_body_regex = Some(r#""id":\d+"#.into());
        c.expect_json = [
            ("status".to_string(), serde_json::json!("ok")),
            ("db.up".to_string(), serde_json::json!(true)),
            ("items.0.id".to_string(), serde_json::json!(7.0)),
            ("/db/up".to_string(), serde_json::json!(true)),
        ]
        .into();
        c.expect_headers = [("content-type".to_string(), "*".to_string())].into();
        assert!(judge_http(&c, &ok).is_empty(), "{:?}", judge_http(&c, &ok));
        c.max_latency = Some(ferry_core::duration::Dur::millis(1));
        c.expect_json.insert("missing".into(), serde_json::json!(1));
        let p = judge_http(&c, &ok);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("took 5.0 ms, more than max_latency 1ms"),
            "{p:?}"
        );
        assert_eq!(p[1], "the JSON has no field `missing`");
        let p = judge_http(&c, &answer(200, "plain", &[]));
        assert!(
            p.iter()
                .any(|x| x.contains("does not contain \"\\\"ok\\\"\"")
                    || x.contains("does not contain")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|x| x.starts_with("the body is not JSON")),
            "{p:?}"
        );
        assert!(p.iter().any(|x| x == "no `content-type` header"), "{p:?}");
    }

    #[test]
    fn security_headers_wants_the_usual_set() {
        let c = CheckSpec::new("h", CheckKind::SecurityHeaders);
        let req = required_headers(&c, true);
        assert_eq!(req[0], "strict-transport-security");
        let a = answer(
            200,
            "",
            &[
                ("x-content-type-options", "sniff"),
                (
                    "content-security-policy",
                    "default-src 'self'; frame-ancestors 'none'",
                ),
                ("strict-transport-security", "max-age=0"),
            ],
        );
        assert_eq!(
            judge_security(&req, &a.headers),
            vec![
                "Strict-Transport-Security has no positive max-age (\"max-age=0\")",
                "X-Content-Type-Options is \"sniff\", not \"nosniff\"",
                "missing Referrer-Policy",
            ]
        );
        let none = answer(200, "", &[]);
        assert_eq!(
            judge_security(&required_headers(&c, false), &none.headers).len(),
            4
        );
    }
}
