//! Email over SMTP (lettre, rustls on ring). Three ways to reach the
//! smarthost:
//! - STARTTLS, required: the default (`require_tls`, else
//!   `global.smtp_require_tls`, else true). A server that does not offer
//!   it is refused, never written to in clear.
//! - Implicit TLS (SMTPS): `tls: true`, or port 465 unless `tls: false`.
//! - Plain, for a local relay: `require_tls: false`.
//!
//! `tls_config` (Alertmanager's names) may give `ca_file` (a PEM CA to
//! trust besides the public roots), `server_name` and
//! `insecure_skip_verify`. Authentication (PLAIN or LOGIN) when
//! `auth_username` is given. The subject is the `Subject` header template,
//! else Alertmanager's default (`[FIRING:1] HighLatency …`); the body is a
//! text part and an HTML part (multipart/alternative), the HTML one left
//! out with `html: ""`. Other `headers` are added as given (templates).
//! `To` may list several addresses, comma-separated.

use super::{
    DEFAULT_TIMEOUT, Inner, Integration, Kind, SendError, at, default_subject, expand, go_time,
    secret,
};
use ferry_alert::config::{EmailConfig, Global, Secret};
use ferry_alert::notify::{Notification, NotifyAlert};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, Mailboxes, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::BTreeMap;
use std::time::Duration;

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// STARTTLS, required.
    StartTls,
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// None: a local relay.
    Plain,
}

pub(super) struct Email {
    host: String,
    port: u16,
    security: Security,
    /// For STARTTLS and implicit TLS.
    tls: Option<TlsParameters>,
    from: String,
    to: String,
    hello: Option<String>,
    credentials: Option<(String, Secret)>,
    /// Header templates by canonical name, `Subject` included.
    headers: BTreeMap<String, String>,
    /// `None`: the default; `Some("")`: no part.
    html: Option<String>,
    text: Option<String>,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("from", &self.from)
            .field("to", &self.to)
            .field(
                "auth_username",
                &self.credentials.as_ref().map(|(u, _)| u.as_str()),
            )
            .finish_non_exhaustive()
    }
}

/// `X-Custom-header` → `X-Custom-Header`, as Go's
/// `textproto.CanonicalMIMEHeaderKey`.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

pub(super) fn build(
    receiver: &str,
    index: usize,
    c: &EmailConfig,
    global: &Global,
) -> Result<Integration, String> {
    let place = at(receiver, Kind::Email, index);
    if c.to.trim().is_empty() {
        return Err(format!("{place}: to is required"));
    }
    if !c.to.contains("{{") {
        c.to.parse::<Mailboxes>()
            .map_err(|e| format!("{place}: to: not an address list ({e})"))?;
    }
    let from = c
        .from
        .clone()
        .or_else(|| global.smtp_from.clone())
        .filter(|f| !f.trim().is_empty())
        .ok_or_else(|| format!("{place}: from (or global.smtp_from) is required"))?;
    if !from.contains("{{") {
        from.parse::<Mailbox>()
            .map_err(|e| format!("{place}: from: not an address ({e})"))?;
    }
    let smarthost = c
        .smarthost
        .clone()
        .or_else(|| global.smtp_smarthost.clone())
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| format!("{place}: smarthost (or global.smtp_smarthost) is required"))?;
    let (host, port) = smarthost
        .trim()
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>().ok()?,
            ))
        })
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| format!("{place}: smarthost {smarthost:?} is not host:port"))?;
    let require_tls = c.require_tls.or(global.smtp_require_tls).unwrap_or(true);
    let security = match c.tls {
        Some(true) => Security::Implicit,
        None if port == 465 => Security::Implicit,
        _ if require_tls => Security::StartTls,
        _ => Security::Plain,
    };
    let tls = match security {
        Security::Plain => None,
        _ => Some(tls_parameters(&place, &host, c.tls_config.as_ref())?),
    };
    // The username and password come together: the receiver's, else the
    // global ones.
    let (username, password, password_file) = if c.auth_username.is_some() {
        (
            c.auth_username.clone(),
            c.auth_password.as_ref(),
            c.auth_password_file.as_deref(),
        )
    } else {
        (
            global.smtp_auth_username.clone(),
            global.smtp_auth_password.as_ref(),
            global.smtp_auth_password_file.as_deref(),
        )
    };
    let credentials = match username.filter(|u| !u.is_empty()) {
        None => None,
        Some(u) => {
            let p = secret(&place, "auth_password", password, password_file)?.ok_or_else(|| {
                format!("{place}: auth_username is set, auth_password (or auth_password_file) is required")
            })?;
            Some((u, p))
        }
    };
    let mut headers = BTreeMap::new();
    for (k, v) in &c.headers {
        let name = canonical(k);
        if HeaderName::new_from_ascii(name.clone()).is_err() {
            return Err(format!("{place}: headers: {k:?} is not a header name"));
        }
        if headers.insert(name.clone(), v.clone()).is_some() {
            return Err(format!("{place}: headers: {name} is given twice"));
        }
    }
    let secrets = credentials.iter().map(|(_, p)| p.clone()).collect();
    Ok(Integration {
        receiver: receiver.to_string(),
        kind: Kind::Email,
        index,
        send_resolved: c.send_resolved,
        timeout: DEFAULT_TIMEOUT,
        secrets,
        inner: Inner::Email(Email {
            host,
            port,
            security,
            tls,
            from,
            to: c.to.clone(),
            hello: c.hello.clone().or_else(|| global.smtp_hello.clone()),
            credentials,
            headers,
            html: c.html.clone(),
            text: c.text.clone(),
        }),
    })
}

/// TLS parameters from `tls_config`: `ca_file`, `server_name`,
/// `insecure_skip_verify`.
fn tls_parameters(
    place: &str,
    host: &str,
    cfg: Option<&serde_json::Value>,
) -> Result<TlsParameters, String> {
    let empty = serde_json::Map::new();
    let cfg = match cfg {
        None | Some(serde_json::Value::Null) => &empty,
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(format!("{place}: tls_config must be a table")),
    };
    for k in cfg.keys() {
        if !matches!(
            k.as_str(),
            "ca_file" | "server_name" | "insecure_skip_verify"
        ) {
            return Err(format!(
                "{place}: tls_config.{k} is not supported (ca_file, server_name, insecure_skip_verify are)"
            ));
        }
    }
    let server_name = match cfg.get("server_name") {
        None => host.to_string(),
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(format!("{place}: tls_config.server_name must be a name")),
    };
    let mut b = TlsParameters::builder(server_name);
    if let Some(ca) = cfg.get("ca_file") {
        let path = ca
            .as_str()
            .ok_or_else(|| format!("{place}: tls_config.ca_file must be a path"))?;
        let pem =
            std::fs::read(path).map_err(|e| format!("{place}: tls_config.ca_file {path}: {e}"))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| format!("{place}: tls_config.ca_file {path}: {e}"))?;
        b = b.add_root_certificate(cert);
    }
    match cfg.get("insecure_skip_verify") {
        None | Some(serde_json::Value::Bool(false)) => {}
        Some(serde_json::Value::Bool(true)) => {
            b = b
                .dangerous_accept_invalid_certs(true)
                .dangerous_accept_invalid_hostnames(true)
        }
        Some(_) => {
            return Err(format!(
                "{place}: tls_config.insecure_skip_verify must be true or false"
            ));
        }
    }
    b.build_rustls()
        .map_err(|e| format!("{place}: tls_config: {e}"))
}

impl Email {
    /// The message for `n`.
    pub(super) fn message(&self, n: &Notification) -> Result<Message, SendError> {
        let perm = SendError::permanent;
        let subject = match self.headers.get("Subject") {
            Some(t) => expand("Subject header", t, n)?,
            None => default_subject(n),
        };
        let from_text = match self.headers.get("From") {
            Some(t) => expand("From header", t, n)?,
            None => expand("from", &self.from, n)?,
        };
        let to_text = match self.headers.get("To") {
            Some(t) => expand("To header", t, n)?,
            None => expand("to", &self.to, n)?,
        };
        let from: Mailbox = from_text
            .parse()
            .map_err(|e| perm(format!("from: not an address ({e})")))?;
        let to: Mailboxes = to_text
            .parse()
            .map_err(|e| perm(format!("to: not an address list ({e})")))?;
        let mut b = Message::builder()
            .from(from)
            .subject(subject.replace(['\r', '\n'], " "))
            .date_now();
        for m in to {
            b = b.to(m);
        }
        for (k, t) in &self.headers {
            if matches!(k.as_str(), "Subject" | "From" | "To") {
                continue;
            }
            let v = expand(&format!("{k} header"), t, n)?;
            let name = HeaderName::new_from_ascii(k.clone())
                .map_err(|_| perm(format!("headers: {k:?} is not a header name")))?;
            b = b.raw_header(HeaderValue::new(name, v.replace(['\r', '\n'], " ")));
        }
        let text = match &self.text {
            Some(t) if !t.is_empty() => Some(expand("text", t, n)?),
            Some(_) => None,
            None => Some(default_text(n)),
        };
        let html = match &self.html {
            Some(t) if !t.is_empty() => Some(expand("html", t, n)?),
            Some(_) => None,
            None => Some(default_html(n)),
        };
        let built = match (text, html) {
            (Some(t), Some(h)) => b.multipart(MultiPart::alternative_plain_html(t, h)),
            (None, Some(h)) => b.singlepart(SinglePart::html(h)),
            (Some(t), None) => b.singlepart(SinglePart::plain(t)),
            (None, None) => b.singlepart(SinglePart::plain(default_text(n))),
        };
        built.map_err(|e| perm(format!("message: {e}")))
    }

    pub(super) async fn send(&self, n: &Notification, timeout: Duration) -> Result<(), SendError> {
        let message = self.message(n)?;
        let tls = match (self.security, &self.tls) {
            (Security::StartTls, Some(p)) => Tls::Required(p.clone()),
            (Security::Implicit, Some(p)) => Tls::Wrapper(p.clone()),
            _ => Tls::None,
        };
        let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.clone())
            .port(self.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(h) = &self.hello {
            t = t.hello_name(ClientId::Domain(h.clone()));
        }
        if let Some((u, p)) = &self.credentials {
            t = t.credentials(Credentials::new(u.clone(), p.expose().to_string()));
        }
        let transport = t.build();
        match transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.smtp_error(&e)),
        }
    }

    fn smtp_error(&self, e: &lettre::transport::smtp::Error) -> SendError {
        let smarthost = format!("{}:{}", self.host, self.port);
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let s_text = s.to_string();
            if s_text.contains(&text) {
                text = s_text;
            } else if !text.contains(&s_text) {
                text.push_str(": ");
                text.push_str(&s_text);
            }
            source = s.source();
        }
        // lettre repeats its error kind in its source's text.
        let mut parts: Vec<&str> = text.split(": ").collect();
        parts.dedup();
        let text = parts.join(": ");
        if e.is_client() && text.contains("STARTTLS") {
            return SendError::permanent(format!(
                "require_tls is true (the default) but {smarthost} does not offer STARTTLS; set require_tls: false for a local relay without TLS, or tls: true for SMTPS"
            ));
        }
        let message = format!("SMTP {smarthost}: {text}");
        if e.is_permanent() {
            SendError::permanent(message)
        } else {
            SendError::retryable(message)
        }
    }
}

/// The text body: the subject, then each firing and resolved alert's
/// labels, annotations, start and source.
pub(super) fn default_text(n: &Notification) -> String {
    let mut s = format!("{}\n", default_subject(n));
    if !n.external_url.is_empty() {
        s.push_str(&format!("{}\n", n.external_url));
    }
    let firing: Vec<&NotifyAlert> = n.firing().collect();
    let resolved: Vec<&NotifyAlert> = n.resolved().collect();
    for (what, list) in [("firing", &firing), ("resolved", &resolved)] {
        if list.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "\n{} alert{} {what}:\n",
            list.len(),
            if list.len() == 1 { "" } else { "s" }
        ));
        for a in list {
            s.push('\n');
            s.push_str(&super::text_alert_list(std::iter::once(*a)));
        }
    }
    if n.truncated_alerts > 0 {
        s.push_str(&format!("\n{} more alerts left out\n", n.truncated_alerts));
    }
    s
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML body: the same as the text one, as a page.
pub(super) fn default_html(n: &Notification) -> String {
    let e = html_escape;
    let mut s = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"UTF-8\"><title>{0}</title></head>\n<body style=\"font-family: sans-serif\">\n<h2>{0}</h2>\n",
        e(&default_subject(n))
    );
    if !n.external_url.is_empty() {
        s.push_str(&format!(
            "<p><a href=\"{0}\">{0}</a></p>\n",
            e(&n.external_url)
        ));
    }
    let firing: Vec<&NotifyAlert> = n.firing().collect();
    let resolved: Vec<&NotifyAlert> = n.resolved().collect();
    for (what, list) in [("Firing", &firing), ("Resolved", &resolved)] {
        if list.is_empty() {
            continue;
        }
        s.push_str(&format!("<h3>{what} ({})</h3>\n", list.len()));
        for a in list {
            s.push_str("<table border=\"0\" cellpadding=\"2\">\n<tr><th colspan=\"2\" align=\"left\">Labels</th></tr>\n");
            for (k, v) in &a.labels {
                s.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>\n", e(k), e(v)));
            }
            if !a.annotations.is_empty() {
                s.push_str("<tr><th colspan=\"2\" align=\"left\">Annotations</th></tr>\n");
                for (k, v) in &a.annotations {
                    s.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>\n", e(k), e(v)));
                }
            }
            s.push_str(&format!(
                "<tr><td>Started</td><td>{}</td></tr>\n",
                go_time(a.starts_at)
            ));
            if !a.generator_url.is_empty() {
                s.push_str(&format!(
                    "<tr><td>Source</td><td><a href=\"{0}\">{0}</a></td></tr>\n",
                    e(&a.generator_url)
                ));
            }
            s.push_str("</table>\n<hr>\n");
        }
    }
    s.push_str("</body></html>\n");
    s
}
