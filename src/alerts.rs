//! `ferry alerts …`: what fires, what was sent, silences, acknowledgements.
//! Talks to the daemon's alert API (`/v1/alerts…`) and its
//! Alertmanager-compatible silences (`/api/v2/silences`).

use crate::client::{CliError, CliResult, Client};
use crate::commands::Output;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AlertsCmd {
    /// The alerts pending and firing now, grouped as they are notified,
    /// with their state, age and whether they are silenced, inhibited or
    /// acknowledged (the default).
    List {
        /// Also alerts resolved in the last 15 minutes.
        #[arg(long)]
        all: bool,
    },
    /// The rules loaded: group, file (or "built-in"), state and health.
    Rules,
    /// Every alert state change and notification attempt, oldest first.
    History {
        /// How far back, e.g. 24h or 7d.
        #[arg(long, default_value = "24h", value_parser = crate::duration_arg)]
        since: Duration,
        /// Only this alert name.
        #[arg(long)]
        alert: Option<String>,
        /// At most this many lines (the newest).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
    /// Acknowledge an alert: no repeat notifications until it resolves or
    /// the acknowledgement expires; PagerDuty is told.
    Ack {
        /// The alert's ID (its fingerprint, as `ferry alerts` shows it; a
        /// unique prefix will do).
        id: String,
        /// Why, or who is on it.
        #[arg(long)]
        comment: Option<String>,
        /// Expire the acknowledgement after this long, e.g. 2h.
        #[arg(long = "for", value_name = "DURATION", value_parser = crate::duration_arg)]
        for_: Option<Duration>,
    },
    /// Withdraw an acknowledgement.
    Unack {
        /// The alert's ID.
        id: String,
    },
    /// Resolve an alert by hand: receivers are told it is resolved, and it
    /// stays resolved until its source fires it anew.
    Resolve {
        /// The alert's ID.
        id: String,
    },
    /// Silences: alerts matching them are not notified.
    Silence {
        #[command(subcommand)]
        cmd: SilenceCmd,
    },
    /// Re-read the rule files and the routing config; all or nothing (on an
    /// error the running config stays and the errors are shown).
    Reload,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SilenceCmd {
    /// Silence the alerts matching every MATCHER, e.g.
    /// `ferry alerts silence add 'alertname="HostCpuWarning"' 'instance=~"db.*"' --for 2h --comment "maintenance"`.
    Add {
        /// Alertmanager matchers: name="value", name!="value", name=~"regex", name!~"regex".
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long (default 1h).
        #[arg(long = "for", value_name = "DURATION", default_value = "1h", value_parser = crate::duration_arg)]
        for_: Duration,
        /// Why.
        #[arg(long, required = true)]
        comment: String,
        /// Who (default: you@host).
        #[arg(long)]
        author: Option<String>,
    },
    /// The silences, active and pending (with --all, expired too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    Expire {
        /// The silence's ID.
        id: String,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    ferry_core::time::rfc3339(ms)
}

/// "3m", "2h5m": how long ago `ms` was.
fn age(ms: u64) -> String {
    let secs = now_ms().saturating_sub(ms) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn labels_text(v: &Value, skip: &[&str]) -> String {
    let Some(obj) = v.as_object() else {
        return String::new();
    };
    let parts: Vec<String> = obj
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    parts.join(" ")
}

fn print_json_lines(items: &[Value]) {
    for item in items {
        say!("{item}");
    }
}

fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn run(client: &Client, cmd: Option<&AlertsCmd>, output: Output) -> CliResult<()> {
    match cmd.unwrap_or(&AlertsCmd::List { all: false }) {
        AlertsCmd::List { all } => list(client, *all, output).await,
        AlertsCmd::Rules => rules(client, output).await,
        AlertsCmd::History {
            since,
            alert,
            limit,
        } => history(client, *since, alert.as_deref(), *limit, output).await,
        AlertsCmd::Ack { id, comment, for_ } => {
            let body = json!({
                "comment": comment,
                "for_seconds": for_.map(|d| d.as_secs()),
            });
            let v: Value = client
                .post(&format!("/v1/alerts/{}/ack", escape(id)), &body)
                .await?;
            done(v, output)
        }
        AlertsCmd::Unack { id } => {
            let v: Value = client
                .delete(&format!("/v1/alerts/{}/ack", escape(id)))
                .await?;
            done(v, output)
        }
        AlertsCmd::Resolve { id } => {
            let v: Value = client
                .post(&format!("/v1/alerts/{}/resolve", escape(id)), &json!({}))
                .await?;
            done(v, output)
        }
        AlertsCmd::Reload => {
            let v: Value = client.post("/v1/alerts/reload", &json!({})).await?;
            done(v, output)
        }
        AlertsCmd::Silence { cmd } => silence(client, cmd, output).await,
    }
}

fn done(v: Value, output: Output) -> CliResult<()> {
    if output == Output::Json {
        say!("{v}");
    } else {
        say!("{}", v["message"].as_str().unwrap_or("done"));
    }
    Ok(())
}

async fn list(client: &Client, all: bool, output: Output) -> CliResult<()> {
    let path = if all {
        "/v1/alerts?resolved=true"
    } else {
        "/v1/alerts"
    };
    let v: Value = client.get(path).await?;
    let alerts = v["alerts"].as_array().cloned().unwrap_or_default();
    if output == Output::Json {
        print_json_lines(&alerts);
        return Ok(());
    }
    if alerts.is_empty() {
        say!("no alerts{}", if all { "" } else { " pending or firing" });
        return Ok(());
    }
    // Grouped as notified; pending alerts (not sent yet) in a group of
    // their own.
    let mut groups: Vec<(String, Vec<&Value>)> = Vec::new();
    for a in &alerts {
        let key = a["group"].as_str().unwrap_or("").to_string();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(a),
            None => groups.push((key, vec![a])),
        }
    }
    for (key, list) in groups {
        let receivers = list[0]["receivers"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        if key.is_empty() {
            say!("not notified (pending, or from rules not sent yet):");
        } else {
            say!(
                "group {key} → {}",
                if receivers.is_empty() {
                    "no receiver".to_string()
                } else {
                    receivers
                }
            );
        }
        for a in list {
            let mut notes = Vec::new();
            if let Some(s) = a["silenced_by"].as_array().filter(|s| !s.is_empty()) {
                notes.push(format!(
                    "silenced by {}",
                    s.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            if let Some(s) = a["inhibited_by"].as_array().filter(|s| !s.is_empty()) {
                notes.push(format!(
                    "inhibited by {}",
                    s.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            if a["muted"].as_bool() == Some(true) {
                notes.push("muted (time interval)".into());
            }
            if a["ack"].is_object() {
                let until = a["ack"]["until"]
                    .as_u64()
                    .map(|u| format!(" until {}", rfc3339(u)))
                    .unwrap_or_default();
                notes.push(format!(
                    "acknowledged by {}{until}{}",
                    a["ack"]["by"].as_str().unwrap_or("?"),
                    a["ack"]["comment"]
                        .as_str()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                ));
            }
            let since = a["since"].as_u64().unwrap_or(0);
            let summary = a["annotations"]["summary"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| labels_text(&a["labels"], &["alertname"]));
            say!(
                "  {:<16}  {:<8}  {:>6}  {:<28}  {:<9}  {}{}",
                a["id"].as_str().unwrap_or(""),
                a["state"].as_str().unwrap_or(""),
                age(since),
                a["name"].as_str().unwrap_or(""),
                a["labels"]["severity"].as_str().unwrap_or("-"),
                summary,
                if notes.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", notes.join("; "))
                }
            );
        }
    }
    Ok(())
}

async fn rules(client: &Client, output: Output) -> CliResult<()> {
    let v: Value = client.get("/api/v1/rules").await?;
    let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
    if output == Output::Json {
        print_json_lines(&groups);
        return Ok(());
    }
    if groups.is_empty() {
        say!("no rules loaded (see [alerting] in ferry.toml)");
        return Ok(());
    }
    for g in &groups {
        say!(
            "group {} ({}, every {}s)",
            g["name"].as_str().unwrap_or(""),
            g["file"].as_str().unwrap_or(""),
            g["interval"].as_f64().unwrap_or(0.0)
        );
        for r in g["rules"].as_array().into_iter().flatten() {
            let kind = r["type"].as_str().unwrap_or("");
            let state = if kind == "alerting" {
                r["state"].as_str().unwrap_or("")
            } else {
                "record"
            };
            let health = match r["health"].as_str() {
                Some("err") => format!("  ERROR: {}", r["lastError"].as_str().unwrap_or("")),
                _ => String::new(),
            };
            say!(
                "  {:<30}  {:<8}  {}{}",
                r["name"].as_str().unwrap_or(""),
                state,
                r["query"].as_str().unwrap_or(""),
                health
            );
        }
    }
    Ok(())
}

async fn history(
    client: &Client,
    since: Duration,
    alert: Option<&str>,
    limit: u32,
    output: Output,
) -> CliResult<()> {
    let from = now_ms().saturating_sub(since.as_millis() as u64);
    let mut path = format!("/v1/alerts/history?since={from}&limit={limit}");
    if let Some(a) = alert {
        path.push_str(&format!("&alert={}", escape(a)));
    }
    let v: Value = client.get(&path).await?;
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    if output == Output::Json {
        print_json_lines(&entries);
        return Ok(());
    }
    if entries.is_empty() {
        say!("nothing happened in that time");
        return Ok(());
    }
    for e in &entries {
        let at = rfc3339(e["at"].as_u64().unwrap_or(0));
        say!(
            "{}  {:<14}  {:<24}  {}",
            at.get(..19).unwrap_or(&at),
            e["kind"].as_str().unwrap_or(""),
            e["alertname"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

async fn silence(client: &Client, cmd: &SilenceCmd, output: Output) -> CliResult<()> {
    match cmd {
        SilenceCmd::Add {
            matchers,
            for_,
            comment,
            author,
        } => {
            // Serialized as Alertmanager's API takes them: name, value,
            // isRegex, isEqual.
            let mut parsed = Vec::new();
            for m in matchers {
                parsed.push(
                    ferry_alert::matcher::Matcher::parse(m)
                        .map_err(|e| CliError::usage(format!("matcher {m:?}: {e}")))?,
                );
            }
            let now = now_ms();
            let body = json!({
                "matchers": parsed,
                "startsAt": rfc3339(now),
                "endsAt": rfc3339(now + for_.as_millis() as u64),
                "createdBy": author.clone().unwrap_or_else(crate::client::actor),
                "comment": comment,
            });
            let v: Value = client.post("/api/v2/silences", &body).await?;
            if output == Output::Json {
                say!("{v}");
            } else {
                say!(
                    "silence {} active until {}",
                    v["silenceID"].as_str().unwrap_or("?"),
                    rfc3339(now + for_.as_millis() as u64)
                );
            }
            Ok(())
        }
        SilenceCmd::List { all } => {
            let v: Vec<Value> = client.get("/api/v2/silences").await?;
            let shown: Vec<Value> = v
                .into_iter()
                .filter(|s| *all || s["status"]["state"] != "expired")
                .collect();
            if output == Output::Json {
                print_json_lines(&shown);
                return Ok(());
            }
            if shown.is_empty() {
                say!("no silences");
                return Ok(());
            }
            for s in &shown {
                let matchers: Vec<String> = s["matchers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        let op = match (
                            m["isEqual"].as_bool() != Some(false),
                            m["isRegex"].as_bool() == Some(true),
                        ) {
                            (true, false) => "=",
                            (false, false) => "!=",
                            (true, true) => "=~",
                            (false, true) => "!~",
                        };
                        format!(
                            "{}{op}{:?}",
                            m["name"].as_str().unwrap_or(""),
                            m["value"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                say!(
                    "{}  {:<8}  until {}  {}  by {}: {}",
                    s["id"].as_str().unwrap_or(""),
                    s["status"]["state"].as_str().unwrap_or(""),
                    s["endsAt"].as_str().unwrap_or(""),
                    matchers.join(" "),
                    s["createdBy"].as_str().unwrap_or(""),
                    s["comment"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        SilenceCmd::Expire { id } => {
            client
                .delete_empty(&format!("/api/v2/silence/{}", escape(id)))
                .await?;
            if output == Output::Json {
                say!("{}", json!({"id": id, "expired": true}));
            } else {
                say!("silence {id} expired");
            }
            Ok(())
        }
    }
}
