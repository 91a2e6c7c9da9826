//! Reports of a validation run: text (the guide's symbols, a summary line
//! last), JSON, JUnit XML (for CI systems), Markdown and HTML (one
//! self-contained page).

use super::result::{CheckResult, Status, Summary};
use crate::Millis;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One run of one or more suites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    /// What was validated: `suites smoke, perf against web (revision 3)`.
    pub title: String,
    pub started_at: Millis,
    pub duration_ms: u64,
    pub summary: Summary,
    /// Nothing FAILED.
    pub ok: bool,
    pub results: Vec<CheckResult>,
}

impl Report {
    pub fn new(
        title: String,
        started_at: Millis,
        duration_ms: u64,
        results: Vec<CheckResult>,
    ) -> Report {
        let summary = Summary::of(&results);
        Report {
            title,
            started_at,
            duration_ms,
            ok: summary.ok(),
            summary,
            results,
        }
    }

    /// The suites in the order their first check appears.
    fn suites(&self) -> Vec<&str> {
        let mut suites: Vec<&str> = Vec::new();
        for r in &self.results {
            if !suites.contains(&r.suite.as_str()) {
                suites.push(&r.suite);
            }
        }
        suites
    }
}

/// How a report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Junit,
    Markdown,
    Html,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            "junit" => Some(Format::Junit),
            "markdown" | "md" => Some(Format::Markdown),
            "html" => Some(Format::Html),
            _ => None,
        }
    }
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Text => text(report),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(report).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Junit => junit(report),
        Format::Markdown => markdown(report),
        Format::Html => html(report),
    }
}

/// `1.2s`, `35ms`.
pub fn fmt_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The verdict of a whole run, for the last line.
fn verdict(s: &Summary) -> &'static str {
    if s.failed > 0 {
        "FAILED"
    } else if s.warning > 0 {
        "PASSED with warnings"
    } else {
        "PASSED"
    }
}

fn text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Validation of {}, {}",
        report.title,
        crate::time::rfc3339(report.started_at)
    );
    for suite in report.suites() {
        let _ = writeln!(out, "\n{suite}");
        for r in report.results.iter().filter(|r| r.suite == suite) {
            let value = r
                .value
                .as_deref()
                .map(|v| format!(" [{v}]"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {:<7} {} ({}, {}){value}: {}",
                r.status.symbol(),
                r.status.as_str(),
                r.name,
                r.kind,
                fmt_duration(r.duration_ms),
                r.reason
            );
            if let Some(output) = r.output.as_deref().filter(|o| !o.trim().is_empty())
                && r.status != Status::Passed
            {
                for line in output.trim_end().lines() {
                    let _ = writeln!(out, "      | {line}");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "\nSummary: {} in {}: {}",
        report.summary,
        fmt_duration(report.duration_ms),
        verdict(&report.summary)
    );
    out
}

/// Escape text for XML attributes and content; characters XML 1.0 cannot
/// carry at all are dropped.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

fn secs(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// JUnit XML as Jenkins, GitLab and GitHub's test reporters read it: one
/// `<testsuite>` per suite, a `<failure>` per FAILED check, `<skipped>`
/// per SKIPPED; a WARNING passes and says so in `<system-out>`.
fn junit(report: &Report) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let s = &report.summary;
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{}\" timestamp=\"{}\">",
        xml(&format!("ferry validate: {}", report.title)),
        s.total,
        s.failed,
        s.skipped,
        secs(report.duration_ms),
        xml(&crate::time::rfc3339(report.started_at))
    );
    for (id, suite) in report.suites().into_iter().enumerate() {
        let results: Vec<&CheckResult> =
            report.results.iter().filter(|r| r.suite == suite).collect();
        let owned: Vec<CheckResult> = results.iter().map(|r| (*r).clone()).collect();
        let ss = Summary::of(&owned);
        let time: u64 = results.iter().map(|r| r.duration_ms).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "  <testsuite id=\"{id}\" name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{}\" timestamp=\"{}\">",
            xml(suite),
            ss.total,
            ss.failed,
            ss.skipped,
            secs(time),
            xml(&crate::time::rfc3339(report.started_at))
        );
        for r in results {
            let _ = write!(
                out,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
                xml(&r.name),
                xml(&format!("{suite}.{}", r.kind)),
                secs(r.duration_ms)
            );
            let value = r
                .value
                .as_deref()
                .map(|v| format!(" [{v}]"))
                .unwrap_or_default();
            match r.status {
                Status::Passed => {
                    let _ = writeln!(out, "/>");
                }
                Status::Failed => {
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>",
                        xml(&r.reason),
                        r.kind,
                        xml(&format!(
                            "{}{value}\n{}",
                            r.reason,
                            r.output.as_deref().unwrap_or("")
                        ))
                    );
                    let _ = writeln!(out, "    </testcase>");
                }
                Status::Skipped => {
                    let _ = writeln!(out, ">\n      <skipped message=\"{}\"/>", xml(&r.reason));
                    let _ = writeln!(out, "    </testcase>");
                }
                Status::Warning => {
                    let _ = writeln!(
                        out,
                        ">\n      <system-out>{}</system-out>",
                        xml(&format!("WARNING: {}{value}", r.reason))
                    );
                    let _ = writeln!(out, "    </testcase>");
                }
            }
        }
        let _ = writeln!(out, "  </testsuite>");
    }
    out.push_str("</testsuites>\n");
    out
}

/// A Markdown cell: pipes escaped, one line.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Validation of {}\n", cell(&report.title));
    let _ = writeln!(
        out,
        "**{}**: {} in {} ({})\n",
        verdict(&report.summary),
        report.summary,
        fmt_duration(report.duration_ms),
        crate::time::rfc3339(report.started_at)
    );
    let _ = writeln!(
        out,
        "| Result | Suite | Check | Kind | Time | Value | Reason |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in &report.results {
        let _ = writeln!(
            out,
            "| {} {} | {} | {} | {} | {} | {} | {} |",
            r.status.symbol(),
            r.status,
            cell(&r.suite),
            cell(&r.name),
            r.kind,
            fmt_duration(r.duration_ms),
            cell(r.value.as_deref().unwrap_or("")),
            cell(&r.reason)
        );
    }
    out
}

/// One page, no scripts or outside resources: it can be mailed or kept
/// as a build artifact.
fn html(report: &Report) -> String {
    let mut out =
        String::from("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(out, "<title>Validation of {}</title>", xml(&report.title));
    out.push_str(
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
         tr.FAILED{background:#fdd}tr.WARNING{background:#ffd}tr.SKIPPED{color:#777}\
         pre{margin:0;white-space:pre-wrap}</style>\n</head>\n<body>\n",
    );
    let _ = writeln!(out, "<h1>Validation of {}</h1>", xml(&report.title));
    let _ = writeln!(
        out,
        "<p><strong>{}</strong>: {} in {} ({})</p>",
        verdict(&report.summary),
        report.summary,
        fmt_duration(report.duration_ms),
        crate::time::rfc3339(report.started_at)
    );
    out.push_str("<table>\n<tr><th>Result</th><th>Suite</th><th>Check</th><th>Kind</th><th>Time</th><th>Value</th><th>Reason</th></tr>\n");
    for r in &report.results {
        let output = r
            .output
            .as_deref()
            .filter(|o| !o.trim().is_empty() && r.status != Status::Passed)
            .map(|o| format!("<pre>{}</pre>", xml(o.trim_end()).replace("&#10;", "\n")))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr class=\"{}\"><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{output}</td></tr>",
            r.status,
            r.status.symbol(),
            r.status,
            xml(&r.suite),
            xml(&r.name),
            r.kind,
            fmt_duration(r.duration_ms),
            xml(r.value.as_deref().unwrap_or("")),
            xml(&r.reason)
        );
    }
    out.push_str("</table>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::spec::CheckKind;

    fn result(suite: &str, name: &str, status: Status, reason: &str) -> CheckResult {
        CheckResult {
            suite: suite.into(),
            name: name.into(),
            kind: CheckKind::Http,
            status,
            duration_ms: 12,
            value: Some("200".into()),
            reason: reason.into(),
            output: None,
        }
    }

    fn sample() -> Report {
        Report::new(
            "suite smoke against web".into(),
            1_700_000_000_000,
            1500,
            vec![
                result("smoke", "home", Status::Passed, "status 200"),
                result(
                    "smoke",
                    "api <v2>",
                    Status::Failed,
                    "expected 200, got 500 & \"oops\"",
                ),
                result(
                    "security",
                    "headers",
                    Status::Warning,
                    "missing Content-Security-Policy",
                ),
                result(
                    "security",
                    "tls",
                    Status::Skipped,
                    "skipped: $NO_TLS is set",
                ),
            ],
        )
    }

    #[test]
    fn text_report_has_symbols_and_a_summary_line_last() {
        let t = render(&sample(), Format::Text);
        assert!(
            t.contains("✅ PASSED  home (http, 12ms) [200]: status 200"),
            "{t}"
        );
        assert!(t.contains("❌ FAILED  api <v2>"), "{t}");
        assert!(t.contains("⚠️ WARNING headers"), "{t}");
        assert!(t.contains("⏭️ SKIPPED tls"), "{t}");
        let last = t.trim_end().lines().last().unwrap();
        assert_eq!(
            last,
            "Summary: 4 checks: 1 passed, 1 failed, 1 warning, 1 skipped in 1.5s: FAILED"
        );
    }

    #[test]
    fn junit_counts_and_escapes() {
        let x = render(&sample(), Format::Junit);
        assert!(
            x.contains("tests=\"4\" failures=\"1\" errors=\"0\" skipped=\"1\""),
            "{x}"
        );
        assert!(x.contains("name=\"api &lt;v2&gt;\""), "{x}");
        assert!(
            x.contains("message=\"expected 200, got 500 &amp; &quot;oops&quot;\""),
            "{x}"
        );
        assert!(
            x.contains("<skipped message=\"skipped: $NO_TLS is set\"/>"),
            "{x}"
        );
        assert_eq!(x.matches("<testsuite ").count(), 2);
        assert_eq!(x.matches("<testcase ").count(), 4);
    }

    #[test]
    fn markdown_is_a_table() {
        let m = render(&sample(), Format::Markdown);
        assert!(m.contains("| ❌ FAILED | smoke | api <v2> | http |"), "{m}");
        assert!(m.starts_with("# Validation of suite smoke against web"));
    }

    #[test]
    fn html_escapes_everything_it_quotes() {
        let h = render(&sample(), Format::Html);
        assert!(h.starts_with("<!doctype html>"));
        assert!(
            h.contains(
                "<tr class=\"FAILED\"><td>❌ FAILED</td><td>smoke</td><td>api &lt;v2&gt;</td>"
            ),
            "{h}"
        );
        assert!(
            h.contains("expected 200, got 500 &amp; &quot;oops&quot;"),
            "{h}"
        );
        assert!(!h.contains("<v2>"), "{h}");
        assert!(h.trim_end().ends_with("</html>"));
    }

    #[test]
    fn json_round_trips() {
        let j = render(&sample(), Format::Json);
        let back: Report = serde_json::from_str(&j).unwrap();
        assert_eq!(back, sample());
        assert!(!back.ok);
    }
}
