//! Go `text/template`, as Prometheus expands alert labels and annotations
//! and Alertmanager renders notifications.
//!
//! A lexer and parser ([`Template::parse`]) build a tree once; executing it
//! ([`Template::execute`]) walks the tree over a dynamic [`Value`]. Error
//! messages follow Go's (`template: NAME:LINE: …` when parsing,
//! `template: NAME:LINE:COL: executing "NAME" at <…>: …` when executing).
//! Runaway templates fail instead of hanging or exhausting memory: output
//! is capped at [`MAX_OUTPUT`] bytes, `{{template}}` nesting at
//! [`MAX_DEPTH`], and evaluation at [`MAX_STEPS`] steps.

mod exec;
mod funcs;
mod parse;
mod value;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::rc::Rc;

use crate::alert::LabelSet;
use crate::notify::{Notification, NotifyAlert, Status};

pub use exec::{MAX_DEPTH, MAX_OUTPUT, MAX_STEPS};
pub use funcs::{
    Env, Flavor, humanize, humanize_duration, humanize_percentage, humanize1024, query_escape,
};
pub use value::{Struct, Time, Value, format_time, sprintf};

/// What an alerting rule's label and annotation templates see:
/// `$labels`, `$externalLabels`, `$externalURL`, `$value` (and `.Labels`,
/// `.ExternalLabels`, `.ExternalURL`, `.Value`).
pub struct AlertData<'a> {
    pub labels: &'a LabelSet,
    pub external_labels: &'a LabelSet,
    pub external_url: &'a str,
    pub value: f64,
}

/// The `query` template function: an instant PromQL query at the
/// evaluation time, returning each sample's labels (with `__name__`) and
/// value.
pub type QueryFn<'a> = &'a dyn Fn(&str) -> Result<Vec<(LabelSet, f64)>, String>;

/// What Prometheus prepends to every alert label and annotation template.
pub const ALERT_DEFS: &str = "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}";

/// A parsed template: its own tree and those it `define`s.
#[derive(Debug)]
pub struct Template {
    name: String,
    src: String,
    trees: HashMap<String, Vec<parse::Node>>,
}

impl Template {
    /// Parse `text` as template `name`, knowing `flavor`'s functions (an
    /// unknown function is a parse error, as in Go). The error is Go's,
    /// e.g. `template: NAME:1: function "nosuch" not defined`.
    pub fn parse(name: &str, text: &str, flavor: Flavor) -> Result<Template, String> {
        let has = |f: &str| funcs::has_func(f, flavor);
        match parse::parse(text, &has) {
            Ok(parsed) => Ok(Template {
                name: name.to_string(),
                src: text.to_string(),
                trees: parse::into_trees(name, parsed),
            }),
            Err(e) => Err(format!(
                "template: {name}:{}: {}",
                parse::line_of(text, e.pos),
                e.msg
            )),
        }
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Execute against `data`.
    pub fn execute(&self, data: Value, env: &Env<'_>) -> Result<String, String> {
        self.execute_template(&self.name, data, env)
    }

    /// Execute the template `name` (one defined in this text) against `data`.
    pub fn execute_template(
        &self,
        name: &str,
        data: Value,
        env: &Env<'_>,
    ) -> Result<String, String> {
        let mut st = exec::State::new(&self.src, &self.name, &self.trees, env);
        st.run(name, data)?;
        Ok(st.out)
    }
}

/// The value Prometheus's alert templates get as `.`.
pub fn alert_value(data: &AlertData<'_>) -> Value {
    Value::Struct(Rc::new(Struct {
        type_name: "struct { Labels map[string]string; ExternalLabels map[string]string; ExternalURL string; Value interface {} }",
        fields: vec![
            ("Labels", Value::labels(data.labels)),
            ("ExternalLabels", Value::labels(data.external_labels)),
            ("ExternalURL", Value::str(data.external_url)),
            ("Value", Value::Float(data.value)),
        ],
        pointer: false,
    }))
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Firing => "firing",
        Status::Resolved => "resolved",
    }
}

fn notify_alert_value(a: &NotifyAlert) -> Value {
    let ends = if a.ends_at == 0 {
        value::ZERO_TIME
    } else {
        Time::from_millis(a.ends_at)
    };
    Value::Struct(Rc::new(Struct {
        type_name: "template.Alert",
        fields: vec![
            ("Status", Value::str(status_str(a.status))),
            ("Labels", Value::labels(&a.labels)),
            ("Annotations", Value::labels(&a.annotations)),
            ("StartsAt", Value::Time(Time::from_millis(a.starts_at))),
            ("EndsAt", Value::Time(ends)),
            ("GeneratorURL", Value::str(a.generator_url.as_str())),
            ("Fingerprint", Value::str(a.fingerprint.as_str())),
        ],
        pointer: false,
    }))
}

/// The value Alertmanager's notification templates get as `.`
/// (`template.Data`).
pub fn notification_value(n: &Notification) -> Value {
    Value::Struct(Rc::new(Struct {
        type_name: "*template.Data",
        fields: vec![
            ("Receiver", Value::str(n.receiver.as_str())),
            ("Status", Value::str(status_str(n.status))),
            (
                "Alerts",
                Value::Alerts(Rc::new(n.alerts.iter().map(notify_alert_value).collect())),
            ),
            ("NotificationReason", Value::str(n.reason.as_str())),
            ("GroupLabels", Value::labels(&n.group_labels)),
            ("CommonLabels", Value::labels(&n.common_labels)),
            ("CommonAnnotations", Value::labels(&n.common_annotations)),
            ("RouteLabels", Value::labels(&n.route_labels)),
            ("ExternalURL", Value::str(n.external_url.as_str())),
            ("GroupKey", Value::str(n.group_key.as_str())),
            ("TruncatedAlerts", Value::Int(n.truncated_alerts as i64)),
        ],
        pointer: true,
    }))
}

/// Expand one label or annotation template of alert `name` at `now_ms`.
/// An error becomes the text `<error expanding template: …>`, as in
/// Prometheus; the alert is never dropped.
pub fn expand_alert(
    name: &str,
    text: &str,
    data: &AlertData<'_>,
    query: Option<QueryFn<'_>>,
    now_ms: i64,
) -> String {
    match try_expand_alert(name, text, data, query, now_ms) {
        Ok(s) => s,
        Err(e) => format!("<error expanding template: {e}>"),
    }
}

/// [`expand_alert`] with the error as an error: `error parsing template
/// __alert_NAME: …` or `error executing template __alert_NAME: …`.
pub fn try_expand_alert(
    name: &str,
    text: &str,
    data: &AlertData<'_>,
    query: Option<QueryFn<'_>>,
    now_ms: i64,
) -> Result<String, String> {
    let tname = format!("__alert_{name}");
    let full = format!("{ALERT_DEFS}{text}");
    let t = Template::parse(&tname, &full, Flavor::Prometheus)
        .map_err(|e| format!("error parsing template {tname}: {e}"))?;
    let env = Env {
        flavor: Flavor::Prometheus,
        query,
        now_ms,
        external_url: data.external_url.to_string(),
        missingkey_zero: true,
        kv_methods: false,
    };
    t.execute(alert_value(data), &env)
        .map_err(|e| format!("error executing template {tname}: {e}"))
}

/// Parse a rule's label or annotation template without running it, as
/// `promtool check rules` does.
pub fn check_alert(text: &str) -> Result<(), String> {
    check_alert_named("", text)
}

/// [`check_alert`] for alert `name` (the template is `__alert_NAME`, which
/// appears in the error).
pub fn check_alert_named(name: &str, text: &str) -> Result<(), String> {
    Template::parse(
        &format!("__alert_{name}"),
        &format!("{ALERT_DEFS}{text}"),
        Flavor::Prometheus,
    )
    .map(|_| ())
}

/// Render a notification template (a receiver's `title`, `text`, …)
/// against Alertmanager's template data.
pub fn expand_notification(text: &str, data: &Notification) -> Result<String, String> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    expand_notification_at(text, data, now_ms)
}

/// [`expand_notification`] with `now` and `since` seeing `now_ms`.
pub fn expand_notification_at(
    text: &str,
    data: &Notification,
    now_ms: i64,
) -> Result<String, String> {
    let t = Template::parse("", text, Flavor::Alertmanager)?;
    let env = Env {
        flavor: Flavor::Alertmanager,
        query: None,
        now_ms,
        external_url: data.external_url.clone(),
        missingkey_zero: true,
        kv_methods: true,
    };
    t.execute(notification_value(data), &env)
}
