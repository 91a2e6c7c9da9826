//! Per-service settings of Ferry's proxy (`[services.NAME.proxy]`).

use crate::duration::Dur;
use crate::problem::Problem;
use serde::{Deserialize, Serialize};

/// Settings of the proxy in front of one service. Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// Time to open a TCP connection to an instance.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
    /// Time an instance has to send its response headers once the request
    /// has been sent; then the client gets 504.
    #[serde(default = "defaults::sixty_seconds")]
    pub response_header_timeout: Dur,
    /// How long a client's keep-alive connection may sit idle; a request's
    /// headers must also arrive within it.
    #[serde(default = "defaults::sixty_seconds")]
    pub idle_timeout: Dur,
    /// Longest pause while a client sends a request body (then 408).
    #[serde(default = "defaults::sixty_seconds")]
    pub client_body_timeout: Dur,
    /// Longest a client may stop reading its response before it is cut off.
    #[serde(default = "defaults::sixty_seconds")]
    pub send_timeout: Dur,
    /// Client connections open at once; more get 503.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Idle keep-alive connections kept open to each instance.
    #[serde(default = "defaults::upstream_keepalive")]
    pub upstream_keepalive: u32,
    /// Load balancers in front of Ferry (IP addresses or networks such as
    /// "10.0.0.0/8"): their `X-Forwarded-For` is trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Connections from `trusted_proxies` start with a PROXY protocol header.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
    /// File for the JSON-lines access log (relative paths are under the
    /// daemon's data dir); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// Per-client rate limit; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// `[services.NAME.proxy.rate_limit]`: `rate` requests per `per`, with
/// bursts of up to `burst`, counted per client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub rate: u32,
    #[serde(default = "defaults::one_second")]
    pub per: Dur,
    /// Requests allowed at once above the steady rate; default `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `"client_ip"` (default) or `"header:NAME"` (e.g. "header:x-api-key";
    /// requests without the header count by client address).
    #[serde(default = "defaults::rate_key")]
    pub key: String,
}

impl RateLimitSpec {
    /// The header a `header:NAME` key names (lowercase), or `None` for the
    /// client's address.
    pub fn key_header(&self) -> Option<String> {
        self.key
            .strip_prefix("header:")
            .map(|h| h.trim().to_ascii_lowercase())
    }

    /// Requests per second on average.
    pub fn per_second(&self) -> f64 {
        f64::from(self.rate) / self.per.0.as_secs_f64().max(1e-9)
    }

    /// The burst actually allowed.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.rate).max(1)
    }
}

mod defaults {
    use crate::duration::Dur;
    pub fn connect_timeout() -> Dur {
        Dur::secs(5)
    }
    pub fn sixty_seconds() -> Dur {
        Dur::secs(60)
    }
    pub fn one_second() -> Dur {
        Dur::secs(1)
    }
    pub fn max_connections() -> u32 {
        10_000
    }
    pub fn upstream_keepalive() -> u32 {
        64
    }
    pub fn rate_key() -> String {
        "client_ip".into()
    }
}

impl Default for ProxySpec {
    fn default() -> Self {
        ProxySpec {
            connect_timeout: defaults::connect_timeout(),
            response_header_timeout: defaults::sixty_seconds(),
            idle_timeout: defaults::sixty_seconds(),
            client_body_timeout: defaults::sixty_seconds(),
            send_timeout: defaults::sixty_seconds(),
            max_connections: defaults::max_connections(),
            upstream_keepalive: defaults::upstream_keepalive(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            access_log: None,
            rate_limit: None,
        }
    }
}

/// Whether `text` is an IP address or a network such as `10.0.0.0/8`.
fn valid_network(text: &str) -> bool {
    let (addr, prefix) = match text.trim().split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text.trim(), None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.to_canonical().is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}

/// Whether `name` is a valid HTTP header name.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl ProxySpec {
    /// Problems with these settings; `at` is the key path of the table.
    pub fn validate(&self, at: &[String]) -> Vec<Problem> {
        let mut p = Vec::new();
        let key = |k: &[&str]| -> Vec<String> {
            let mut path = at.to_vec();
            path.extend(k.iter().map(|s| s.to_string()));
            path
        };
        let problem = |k: &[&str], message: String| Problem {
            path: key(k),
            message,
        };
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("response_header_timeout", self.response_header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("client_body_timeout", self.client_body_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            if value.is_zero() {
                p.push(problem(
                    &[name],
                    format!("{name} = \"0s\" would fail every request; give a positive duration such as \"30s\""),
                ));
            }
        }
        if self.max_connections == 0 {
            p.push(problem(
                &["max_connections"],
                "max_connections = 0 would refuse every client; set at least 1 (default 10000)"
                    .into(),
            ));
        }
        for (i, net) in self.trusted_proxies.iter().enumerate() {
            if !valid_network(net) {
                p.push(problem(
                    &["trusted_proxies"],
                    format!("trusted_proxies[{i}] = \"{net}\" is not an IP address or network; write e.g. \"10.0.0.5\" or \"10.0.0.0/8\""),
                ));
            }
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            p.push(problem(
                &["proxy_protocol"],
                "proxy_protocol = true needs trusted_proxies: list the load balancers' addresses that send the PROXY header, e.g. trusted_proxies = [\"10.0.0.0/8\"]".into(),
            ));
        }
        if let Some(path) = &self.access_log
            && path.trim().is_empty()
        {
            p.push(problem(
                &["access_log"],
                "access_log is empty; give a file such as \"logs/web-access.log\" or remove the key".into(),
            ));
        }
        if let Some(limit) = &self.rate_limit {
            if limit.rate == 0 {
                p.push(problem(
                    &["rate_limit", "rate"],
                    "rate = 0 would refuse every request; set the requests allowed per `per` (e.g. rate = 100) or remove [proxy.rate_limit]".into(),
                ));
            }
            if limit.per.is_zero() {
                p.push(problem(
                    &["rate_limit", "per"],
                    "per must be a positive duration such as \"1s\" or \"1m\"".into(),
                ));
            }
            if limit.burst == Some(0) {
                p.push(problem(
                    &["rate_limit", "burst"],
                    "burst = 0 would refuse every request; set at least 1 (default: rate)".into(),
                ));
            }
            let key_ok = limit.key == "client_ip"
                || limit.key_header().is_some_and(|h| valid_header_name(&h));
            if !key_ok {
                p.push(problem(
                    &["rate_limit", "key"],
                    format!("key = \"{}\" is not understood; use \"client_ip\" or \"header:NAME\" (e.g. \"header:x-api-key\")", limit.key),
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ProxySpec, String> {
        toml_edit::de::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_all_keys() {
        assert_eq!(parse("").unwrap(), ProxySpec::default());
        let spec = parse(
            r#"
connect_timeout = "2s"
response_header_timeout = "30s"
idle_timeout = "75s"
client_body_timeout = "10s"
send_timeout = "20s"
max_connections = 500
upstream_keepalive = 16
trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "::1"]
proxy_protocol = true
access_log = "logs/web-access.log"
[rate_limit]
rate = 10
per = "1m"
burst = 20
key = "header:X-Api-Key"
"#,
        )
        .unwrap();
        assert!(spec.validate(&[]).is_empty(), "{:?}", spec.validate(&[]));
        assert_eq!(spec.idle_timeout, Dur::secs(75));
        let limit = spec.rate_limit.as_ref().unwrap();
        assert_eq!(limit.key_header().as_deref(), Some("x-api-key"));
        assert!((limit.per_second() - 10.0 / 60.0).abs() < 1e-9);
        assert_eq!(limit.burst(), 20);
        // Round-trips through serde (revisions store specs as JSON).
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ProxySpec>(&json).unwrap(), spec);
        let default_json = serde_json::to_string(&ProxySpec::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<ProxySpec>(&default_json).unwrap(),
            ProxySpec::default()
        );
        assert!(parse("nope = 1").unwrap_err().contains("nope"));
    }

    #[test]
    fn problems_name_the_key_and_the_fix() {
        let spec = parse(
            r#"
connect_timeout = "0s"
max_connections = 0
trusted_proxies = ["10.0.0.0/40", "lb"]
[rate_limit]
rate = 0
burst = 0
key = "cookie:x"
"#,
        )
        .unwrap();
        let at = vec!["services".to_string(), "web".into(), "proxy".into()];
        let problems = spec.validate(&at);
        let keys: Vec<String> = problems.iter().map(|p| p.key()).collect();
        assert_eq!(
            keys,
            [
                "services.web.proxy.connect_timeout",
                "services.web.proxy.max_connections",
                "services.web.proxy.trusted_proxies",
                "services.web.proxy.trusted_proxies",
                "services.web.proxy.rate_limit.rate",
                "services.web.proxy.rate_limit.burst",
                "services.web.proxy.rate_limit.key",
            ]
        );
        assert!(problems[2].message.contains("10.0.0.0/40"));
        assert!(problems[6].message.contains("header:NAME"));
        let spec = parse("proxy_protocol = true").unwrap();
        let problems = spec.validate(&at);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("trusted_proxies"));
    }
}
