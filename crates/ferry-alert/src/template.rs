//! Go `text/template`, as Prometheus expands alert labels and annotations
//! and Alertmanager renders notifications. (Stub: the engine is being
//! written; these are the entry points the rest of Ferry calls.)

use crate::alert::LabelSet;
use crate::notify::Notification;

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
    let _ = (name, data, query, now_ms);
    text.to_string()
}

/// Parse a rule's label or annotation template without running it, as
/// `promtool check rules` does.
pub fn check_alert(text: &str) -> Result<(), String> {
    let _ = text;
    Ok(())
}

/// Render a notification template (a receiver's `title`, `text`, …)
/// against Alertmanager's template data.
pub fn expand_notification(text: &str, data: &Notification) -> Result<String, String> {
    let _ = data;
    Ok(text.to_string())
}
