//! Template functions: Prometheus's (`template_reference.md`) and
//! Alertmanager's (`DefaultFuncs`).

use std::fmt::Write as _;
use std::rc::Rc;

use super::QueryFn;
use super::exec::{BUILTINS, builtin_arity, map_of};
use super::value::{Struct, Time, Value, fmt_float, parse_time, rfc3339nano, to_v};

/// Which program's function set and data conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Prometheus rule labels and annotations.
    Prometheus,
    /// Alertmanager notification templates.
    Alertmanager,
}

/// What functions can reach while a template runs.
pub struct Env<'a> {
    pub flavor: Flavor,
    pub query: Option<QueryFn<'a>>,
    /// Evaluation time (Prometheus `now`) or wall clock (Alertmanager).
    pub now_ms: i64,
    pub external_url: String,
    /// `missingkey=zero`: a missing `map[string]string` key is "".
    pub missingkey_zero: bool,
    /// Alertmanager's `KV` methods on label maps.
    pub kv_methods: bool,
}

pub(crate) enum CallError {
    /// Reported as `error calling NAME: …`.
    Call(String),
    /// Reported as is (argument type errors).
    Plain(String),
}

const PROMETHEUS: [&str; 29] = [
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "sortByLabel",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toTime",
    "toDuration",
    "now",
    "title",
    "toUpper",
    "toLower",
    "stripPort",
    "stripDomain",
    "match",
    "reReplaceAll",
    "graphLink",
    "tableLink",
    "parseDuration",
    "urlQueryEscape",
    "args",
    "safeHtml",
    "externalURL",
    "pathPrefix",
];

const ALERTMANAGER: [&str; 25] = [
    "toUpper",
    "toLower",
    "title",
    "trimSpace",
    "join",
    "match",
    "safeHtml",
    "safeUrl",
    "urlUnescape",
    "reReplaceAll",
    "stringSlice",
    "routeLabels",
    "date",
    "tz",
    "now",
    "since",
    "humanizeDuration",
    "toDate",
    "mustToDate",
    "toJson",
    "base64encode",
    "base64decode",
    "list",
    "append",
    "dict",
];

/// Whether `name` is a function templates of `flavor` may call.
pub fn has_func(name: &str, flavor: Flavor) -> bool {
    if BUILTINS.contains(&name) {
        return true;
    }
    match flavor {
        Flavor::Prometheus => PROMETHEUS.contains(&name),
        Flavor::Alertmanager => ALERTMANAGER.contains(&name),
    }
}

/// (min, max) argument counts; max None = variadic.
pub(crate) fn arity(name: &str, flavor: Flavor) -> Option<(usize, Option<usize>)> {
    if let Some(a) = builtin_arity(name) {
        return Some(a);
    }
    let n = |k: usize| Some((k, Some(k)));
    match (flavor, name) {
        (_, "now" | "externalURL" | "pathPrefix") => n(0),
        (Flavor::Prometheus, "args") => Some((0, None)),
        (Flavor::Alertmanager, "list" | "stringSlice" | "dict") => Some((0, None)),
        (Flavor::Alertmanager, "append") => Some((1, None)),
        (
            _,
            "label" | "sortByLabel" | "match" | "join" | "date" | "tz" | "toDate" | "mustToDate",
        ) => n(2),
        (_, "reReplaceAll") => n(3),
        _ => n(1),
    }
}

fn want_str(v: &Value) -> Result<&str, CallError> {
    v.as_str().ok_or_else(|| {
        CallError::Plain(format!(
            "wrong type for value; expected string; got {}",
            v.type_name()
        ))
    })
}

fn want_time(v: &Value) -> Result<Time, CallError> {
    match v {
        Value::Time(t) => Ok(*t),
        o => Err(CallError::Plain(format!(
            "wrong type for value; expected time.Time; got {}",
            o.type_name()
        ))),
    }
}

fn want_sample(v: &Value) -> Result<&Struct, CallError> {
    match v {
        Value::Struct(s) if s.type_name == "*template.sample" => Ok(s),
        o => Err(CallError::Plain(format!(
            "wrong type for value; expected *template.sample; got {}",
            o.type_name()
        ))),
    }
}

fn want_results(v: &Value) -> Result<&Vec<Value>, CallError> {
    match v {
        Value::List(l)
            if l.iter()
                .all(|x| matches!(x, Value::Struct(s) if s.type_name == "*template.sample")) =>
        {
            Ok(l)
        }
        o => Err(CallError::Plain(format!(
            "wrong type for value; expected template.queryResult; got {}",
            o.type_name()
        ))),
    }
}

/// Go's `strconv.ParseFloat` error text, for the humanize family.
fn parse_float(s: &str) -> Result<f64, String> {
    let invalid = || {
        format!(
            "strconv.ParseFloat: parsing {}: invalid syntax",
            super::value::go_quote(s)
        )
    };
    let t = s.strip_prefix('+').unwrap_or(s);
    let lower = t.trim_start_matches('-').to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Ok(if t.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if lower == "nan" {
        return Ok(f64::NAN);
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
    {
        return Err(invalid());
    }
    t.parse::<f64>().map_err(|_| invalid())
}

/// Prometheus's `ConvertToFloat`.
fn to_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Int(i) => Ok(*i as f64),
        Value::Str(s) => parse_float(s),
        Value::Duration(d) => Ok(*d as f64 / 1e9),
        o => Err(format!("can't convert {} to float", o.type_name())),
    }
}

fn g4(v: f64) -> String {
    fmt_float(v, 'g', Some(4))
}

pub fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return g4(v);
    }
    let mut v = v;
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", g4(v))
}

pub fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return g4(v);
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", g4(v))
}

pub fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return g4(v);
    }
    if v == 0.0 {
        return format!("{}s", g4(v));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        if days != 0 {
            return format!("{sign}{days}d {h}h {m}m {s}s");
        }
        if h != 0 {
            return format!("{sign}{h}h {m}m {s}s");
        }
        if m != 0 {
            return format!("{sign}{m}m {s}s");
        }
        return format!("{sign}{}s", g4(v));
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", g4(v))
}

pub fn humanize_percentage(v: f64) -> String {
    format!("{}%", g4(v * 100.0))
}

/// Prometheus's `floatToTime`.
fn float_to_time(v: f64) -> Result<Option<Time>, String> {
    if !v.is_finite() {
        return Ok(None);
    }
    let ns = v * 1e9;
    if ns > i64::MAX as f64 || ns < i64::MIN as f64 {
        return Err(format!(
            "{} cannot be represented as a nanoseconds timestamp since it overflows int64",
            fmt_float(v, 'g', None)
        ));
    }
    Ok(Some(Time::from_nanos(ns as i64 as i128)))
}

pub fn humanize_timestamp(v: f64) -> Result<String, String> {
    match float_to_time(v)? {
        None => Ok(g4(v)),
        Some(t) => Ok(to_v(&Value::Time(t))),
    }
}

/// Go's `url.QueryEscape`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn query_unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
                let Some(h) = hex else {
                    let bad = s.get(i..(i + 3).min(s.len())).unwrap_or("%");
                    return Err(format!(
                        "invalid URL escape {}",
                        super::value::go_quote(bad)
                    ));
                };
                out.push(u8::from_str_radix(h, 16).unwrap_or(0));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `net.SplitHostPort`.
fn split_host_port(hp: &str) -> Option<(String, String)> {
    let i = hp.rfind(':')?;
    let (host, j, k);
    if hp.starts_with('[') {
        let end = hp.find(']')?;
        if end + 1 != i {
            return None;
        }
        host = &hp[1..end];
        j = 1;
        k = end + 1;
    } else {
        host = &hp[..i];
        if host.contains(':') {
            return None;
        }
        j = 0;
        k = 0;
    }
    if hp[j..].contains('[') || hp[k..].contains(']') {
        return None;
    }
    Some((host.to_string(), hp[i + 1..].to_string()))
}

/// Title case: the first letter of each word upper-cased (`lower_rest`:
/// the rest lower-cased, as Alertmanager's `cases.Title`).
fn title(s: &str, lower_rest: bool) -> String {
    let mut out = String::new();
    let mut in_word = false;
    for c in s.chars() {
        if c.is_alphanumeric() || (in_word && (c == '\'' || c == '’')) {
            if in_word {
                if lower_rest {
                    out.extend(c.to_lowercase());
                } else {
                    out.push(c);
                }
            } else {
                out.extend(c.to_uppercase());
            }
            in_word = true;
        } else {
            out.push(c);
            in_word = false;
        }
    }
    out
}

/// Time zones this engine knows (no zone database): UTC only.
pub(crate) fn check_zone(name: &str) -> Result<(), String> {
    match name {
        "" | "UTC" | "Local" | "Etc/UTC" | "GMT" => Ok(()),
        n => Err(format!("unknown time zone {n}")),
    }
}

fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) | Value::Duration(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.to_string()),
        Value::List(l) | Value::Alerts(l) => J::Array(l.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Value::Labels(m) => J::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), J::String(v.clone())))
                .collect(),
        ),
        Value::Pairs(p) => J::Array(
            p.iter()
                .map(|(k, v)| serde_json::json!({"Name": k, "Value": v}))
                .collect(),
        ),
        Value::Struct(s) => J::Object(
            s.fields
                .iter()
                .map(|(k, v)| (json_name(k), to_json(v)))
                .collect(),
        ),
        Value::Time(t) => J::String(rfc3339nano(*t)),
    }
}

/// Alertmanager's JSON field names.
fn json_name(field: &str) -> String {
    match field {
        "GeneratorURL" => "generatorURL".into(),
        "ExternalURL" => "externalURL".into(),
        "NotificationReason" => "notification_reason".into(),
        f => {
            let mut c = f.chars();
            match c.next() {
                Some(first) => first.to_lowercase().chain(c).collect(),
                None => String::new(),
            }
        }
    }
}

fn base64_url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_url_decode(s: &str) -> Result<String, String> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    let body = s.trim_end_matches('=');
    if !s.len().is_multiple_of(4) {
        return Err(format!(
            "illegal base64 data at input byte {}",
            s.len() / 4 * 4
        ));
    }
    for (i, c) in body.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return Err(format!("illegal base64 data at input byte {i}")),
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn sample(labels: crate::alert::LabelSet, value: f64) -> Value {
    Value::Struct(Rc::new(Struct {
        type_name: "*template.sample",
        fields: vec![
            ("Labels", Value::Labels(Rc::new(labels))),
            ("Value", Value::Float(value)),
        ],
        pointer: true,
    }))
}

fn regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            format!(
                "error parsing regexp: {}",
                e.to_string().lines().last().unwrap_or("invalid")
            )
        })
}

/// Call a Prometheus or Alertmanager function (not a Go builtin).
pub(crate) fn call(name: &str, args: Vec<Value>, env: &Env<'_>) -> Result<Value, CallError> {
    let c = |e: String| CallError::Call(e);
    let prom = env.flavor == Flavor::Prometheus;
    Ok(match name {
        "toUpper" => Value::str(want_str(&args[0])?.to_uppercase()),
        "toLower" => Value::str(want_str(&args[0])?.to_lowercase()),
        "title" => Value::str(title(want_str(&args[0])?, !prom)),
        "trimSpace" => Value::str(want_str(&args[0])?.trim()),
        "safeHtml" | "safeUrl" | "urlQueryEscape" if name != "urlQueryEscape" => {
            Value::str(want_str(&args[0])?)
        }
        "urlQueryEscape" => Value::str(query_escape(want_str(&args[0])?)),
        "urlUnescape" => Value::str(query_unescape(want_str(&args[0])?).map_err(c)?),
        "match" => {
            let re = regex(want_str(&args[0])?).map_err(c)?;
            Value::Bool(re.is_match(want_str(&args[1])?))
        }
        "reReplaceAll" => {
            let pat = want_str(&args[0])?;
            let re = regex(pat).map_err(|e| {
                c(format!(
                    "regexp: Compile({}): {e}",
                    super::value::go_quote(pat)
                ))
            })?;
            let repl = want_str(&args[1])?;
            Value::str(re.replace_all(want_str(&args[2])?, repl).as_ref())
        }
        "join" => {
            let sep = want_str(&args[0])?;
            match &args[1] {
                Value::List(l) => {
                    let mut parts = Vec::with_capacity(l.len());
                    for x in l.iter() {
                        parts.push(want_str(x)?.to_string());
                    }
                    Value::str(parts.join(sep))
                }
                o => {
                    return Err(CallError::Plain(format!(
                        "wrong type for value; expected []string; got {}",
                        o.type_name()
                    )));
                }
            }
        }
        "stringSlice" => {
            for a in &args {
                want_str(a)?;
            }
            Value::list(args)
        }
        "list" => Value::list(args),
        "append" => match &args[0] {
            Value::List(l) => {
                let mut v = (**l).clone();
                v.extend(args[1..].iter().cloned());
                Value::list(v)
            }
            Value::Nil => Value::list(args[1..].to_vec()),
            o => {
                return Err(CallError::Plain(format!(
                    "wrong type for value; expected []interface {{}}; got {}",
                    o.type_name()
                )));
            }
        },
        "dict" => {
            if !args.len().is_multiple_of(2) {
                return Err(c("dict requires an even number of arguments".into()));
            }
            let mut pairs = Vec::new();
            for kv in args.chunks(2) {
                let k = kv[0]
                    .as_str()
                    .ok_or_else(|| c("dict keys must be strings".into()))?;
                pairs.push((k.to_string(), kv[1].clone()));
            }
            map_of(pairs)
        }
        "routeLabels" => Value::str(""),
        "date" => {
            let layout = want_str(&args[0])?;
            Value::str(super::value::format_time(want_time(&args[1])?, layout))
        }
        "tz" => {
            check_zone(want_str(&args[0])?).map_err(c)?;
            Value::Time(want_time(&args[1])?)
        }
        "now" if prom => Value::Float(env.now_ms as f64 / 1000.0),
        "now" => Value::Time(Time::from_millis(env.now_ms)),
        "since" => {
            let t = want_time(&args[0])?;
            let d = i128::from(env.now_ms) * 1_000_000 - t.as_nanos();
            Value::Duration(d.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
        }
        "toDate" => Value::Time(
            parse_time(want_str(&args[0])?, want_str(&args[1])?).unwrap_or(super::value::ZERO_TIME),
        ),
        "mustToDate" => {
            Value::Time(parse_time(want_str(&args[0])?, want_str(&args[1])?).map_err(c)?)
        }
        "toJson" => {
            Value::str(serde_json::to_string(&to_json(&args[0])).map_err(|e| c(e.to_string()))?)
        }
        "base64encode" => Value::str(base64_url(want_str(&args[0])?.as_bytes())),
        "base64decode" => Value::str(base64_url_decode(want_str(&args[0])?).map_err(c)?),
        "humanize" => Value::str(humanize(to_float(&args[0]).map_err(c)?)),
        "humanize1024" => Value::str(humanize1024(to_float(&args[0]).map_err(c)?)),
        "humanizeDuration" => Value::str(humanize_duration(to_float(&args[0]).map_err(c)?)),
        "humanizePercentage" => Value::str(humanize_percentage(to_float(&args[0]).map_err(c)?)),
        "humanizeTimestamp" => {
            Value::str(humanize_timestamp(to_float(&args[0]).map_err(c)?).map_err(c)?)
        }
        "toTime" => match float_to_time(to_float(&args[0]).map_err(c)?).map_err(c)? {
            Some(t) => Value::Time(t),
            None => return Err(c("value is NaN or Inf".into())),
        },
        "toDuration" => {
            let v = to_float(&args[0]).map_err(c)?;
            let ns = v * 1e9;
            // Go's float→int conversion of out-of-range values; saturate.
            Value::Duration(if ns.is_nan() { i64::MIN } else { ns as i64 })
        }
        "parseDuration" => {
            let s = want_str(&args[0])?;
            let (neg, body) = match s.strip_prefix('-') {
                Some(b) => (true, b),
                None => (false, s),
            };
            let d = crate::duration::PromDuration::parse(body)
                .map_err(|_| c(format!("not a valid duration string: {s:?}")))?;
            let secs = d.millis() as f64 / 1000.0;
            Value::Float(if neg { -secs } else { secs })
        }
        "externalURL" => Value::str(env.external_url.as_str()),
        "pathPrefix" => Value::str(url_path(&env.external_url)),
        "graphLink" => Value::str(format!(
            "/graph?g0.expr={}&g0.tab=0",
            query_escape(want_str(&args[0])?)
        )),
        "tableLink" => Value::str(format!(
            "/graph?g0.expr={}&g0.tab=1",
            query_escape(want_str(&args[0])?)
        )),
        "stripPort" => {
            let hp = want_str(&args[0])?;
            Value::str(split_host_port(hp).map_or(hp.to_string(), |(h, _)| h))
        }
        "stripDomain" => {
            let hp = want_str(&args[0])?;
            let (host, port) = split_host_port(hp).unwrap_or((hp.to_string(), String::new()));
            if host.parse::<std::net::IpAddr>().is_ok() {
                Value::str(hp)
            } else {
                let short = host.split('.').next().unwrap_or("").to_string();
                if port.is_empty() {
                    Value::str(short)
                } else if short.contains(':') {
                    Value::str(format!("[{short}]:{port}"))
                } else {
                    Value::str(format!("{short}:{port}"))
                }
            }
        }
        "args" => map_of(
            args.into_iter()
                .enumerate()
                .map(|(i, v)| (format!("arg{i}"), v))
                .collect(),
        ),
        "query" => {
            let q = want_str(&args[0])?;
            let Some(f) = env.query else {
                return Err(c("no query function available".into()));
            };
            let rows = f(q).map_err(c)?;
            Value::list(rows.into_iter().map(|(l, v)| sample(l, v)).collect())
        }
        "first" => {
            let l = want_results(&args[0])?;
            match l.first() {
                Some(s) => s.clone(),
                None => return Err(c("first() called on vector with no elements".into())),
            }
        }
        "label" => {
            let name = want_str(&args[0])?;
            let s = want_sample(&args[1])?;
            match s.field("Labels") {
                Some(Value::Labels(l)) => Value::str(l.get(name).map_or("", String::as_str)),
                _ => Value::str(""),
            }
        }
        "value" => want_sample(&args[0])?
            .field("Value")
            .cloned()
            .unwrap_or_default(),
        "strvalue" => match want_sample(&args[0])?.field("Labels") {
            Some(Value::Labels(l)) => Value::str(l.get("__value__").map_or("", String::as_str)),
            _ => Value::str(""),
        },
        "sortByLabel" => {
            let by = want_str(&args[0])?.to_string();
            let mut l = want_results(&args[1])?.clone();
            let key = |v: &Value| match v {
                Value::Struct(s) => match s.field("Labels") {
                    Some(Value::Labels(l)) => l.get(&by).cloned().unwrap_or_default(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            l.sort_by_key(key);
            Value::list(l)
        }
        other => return Err(c(format!("function {other:?} not implemented"))),
    })
}

/// The path of a URL (`http://h:9090/prefix` → `/prefix`).
fn url_path(url: &str) -> String {
    let rest = match url.find("://") {
        Some(i) => &url[i + 3..],
        None => return url.split(['?', '#']).next().unwrap_or("").to_string(),
    };
    match rest.find('/') {
        Some(i) => rest[i..].split(['?', '#']).next().unwrap_or("").to_string(),
        None => String::new(),
    }
}
