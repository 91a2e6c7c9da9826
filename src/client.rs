//! The API client the CLI uses: finds the daemon (flags, environment, or
//! the data dir's `api.json` and `token`), sends requests, and turns API
//! errors into exit codes.

use ferry_api::{ACTOR_HEADER, API_FILE, ApiInfo, ErrorBody, TOKEN_FILE};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Exit codes: 0 ok, 1 the operation failed, 2 usage or config error.
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
/// Ctrl-C while following a rollout: the rollout goes on in the daemon.
pub const EXIT_INTERRUPTED: i32 = 130;

/// An error for the user, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// Who is acting, as `user@host`, for the audit log and the records of
/// rollouts: `$USER` (or `$LOGNAME`, or the name of the process's uid in
/// the user database, as under cron or in a container where neither is
/// set), at the kernel's hostname.
pub fn actor() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.trim().is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::current())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid{}", nix::unistd::Uid::current()));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

pub struct Client {
    pub base: String,
    token: String,
    http: reqwest::Client,
    actor: String,
}

impl Client {
    /// Find the daemon: `--api`/`--token` (or FERRY_API/FERRY_TOKEN) win;
    /// otherwise read them from the data dir.
    pub fn discover(api: Option<&str>, token: Option<&str>, data_dir: &Path) -> CliResult<Client> {
        let base = match api {
            Some(a) => a.trim_end_matches('/').to_string(),
            None => {
                let path = data_dir.join(API_FILE);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    CliError::failed(format!(
                        "cannot find a running ferry daemon: {} ({e}). Start one with `ferry serve --data-dir {}`, or pass --api URL",
                        path.display(),
                        data_dir.display()
                    ))
                })?;
                let info: ApiInfo = serde_json::from_str(&text).map_err(|e| {
                    CliError::failed(format!(
                        "{} is not readable ({e}); restart `ferry serve`",
                        path.display()
                    ))
                })?;
                info.url
            }
        };
        let token = match token {
            Some(t) => t.to_string(),
            None => {
                let path = data_dir.join(TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| {
                        CliError::usage(format!(
                            "no API token: cannot read {} ({e}); pass --token or set FERRY_TOKEN",
                            path.display()
                        ))
                    })?
            }
        };
        Ok(Client::new(base, token))
    }

    pub fn new(base: String, token: String) -> Client {
        Client {
            base,
            token,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("a plain HTTP client builds"),
            actor: actor(),
        }
    }

    /// The API token (for the daemon's own query API).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> CliResult<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// A DELETE whose success has no body (Alertmanager's API).
    pub async fn delete_empty(&self, path: &str) -> CliResult<()> {
        let resp = self
            .dispatch(self.http.delete(format!("{}{path}", self.base)))
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        Err(refusal(status, &bytes))
    }

    /// A query of the Prometheus-compatible API (`/api/v1/...`), posted as
    /// a form as Grafana does: its `data`, or its error (`bad_data` and
    /// `execution` exit 2).
    pub async fn promql(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> CliResult<serde_json::Value> {
        let resp = self
            .dispatch(self.http.post(format!("{}{path}", self.base)).form(params))
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| CliError::failed(format!("unexpected answer from the daemon ({e})")))?;
        if body["status"] == "success" {
            return Ok(body["data"].clone());
        }
        let message = body["error"]
            .as_str()
            .or_else(|| body["error"]["message"].as_str())
            .unwrap_or("the query failed")
            .to_string();
        Err(CliError {
            code: exit_code(status),
            message,
        })
    }

    /// Send with the token and the actor; a daemon that cannot be reached
    /// is an error that says so.
    async fn dispatch(&self, req: reqwest::RequestBuilder) -> CliResult<reqwest::Response> {
        req.bearer_auth(&self.token)
            .header(ACTOR_HEADER, &self.actor)
            .send()
            .await
            .map_err(|e| {
                CliError::failed(format!(
                    "cannot reach the ferry daemon at {}: {}. Is `ferry serve` running?",
                    self.base,
                    error_chain(&e)
                ))
            })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> CliResult<T> {
        let resp = self.dispatch(req).await?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CliError::failed(format!("reading the daemon's answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| CliError::failed(format!("unexpected answer from the daemon ({e})")));
        }
        Err(refusal(status, &bytes))
    }
}

/// The daemon's refusal: Ferry's error shape, or a plain-text body (the
/// Alertmanager-compatible API answers so).
fn refusal(status: reqwest::StatusCode, bytes: &[u8]) -> CliError {
    let message = serde_json::from_slice::<ErrorBody>(bytes)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).trim().to_string());
    CliError {
        code: exit_code(status),
        message,
    }
}

/// What an API refusal means for the exit code.
fn exit_code(status: reqwest::StatusCode) -> i32 {
    match status.as_u16() {
        400 | 401 | 403 | 404 | 422 => EXIT_USAGE,
        _ => EXIT_FAILED,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
