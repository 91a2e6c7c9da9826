//! From a service's `[proxy]` spec to the proxy's runtime options.

use std::path::Path;

use ferry_core::proxy_spec::ProxySpec;
use ferry_proxy::{AccessLogOptions, IpNet, ProxyOptions, RateLimitKey, RateLimitOptions};

/// Lines the access log may queue before it drops (and counts) them.
const ACCESS_LOG_BUFFER: usize = 8192;

/// The proxy options for `spec`. A relative `access_log` path stays
/// relative (to the daemon's working directory); prefer [`options_in`].
pub fn options_for(spec: &ProxySpec) -> ProxyOptions {
    options_in(spec, None)
}

/// The proxy options for `spec`, with a relative `access_log` path resolved
/// under `data_dir`.
pub fn options_in(spec: &ProxySpec, data_dir: Option<&Path>) -> ProxyOptions {
    ProxyOptions {
        connect_timeout: spec.connect_timeout.0,
        response_header_timeout: spec.response_header_timeout.0,
        idle_timeout: spec.idle_timeout.0,
        client_body_timeout: spec.client_body_timeout.0,
        send_timeout: spec.send_timeout.0,
        max_connections: spec.max_connections as usize,
        max_idle_per_upstream: spec.upstream_keepalive as usize,
        // Validated when the spec was accepted; anything unparsable is skipped.
        trusted_proxies: spec
            .trusted_proxies
            .iter()
            .filter_map(|n| n.parse::<IpNet>().ok())
            .collect(),
        proxy_protocol: spec.proxy_protocol,
        access_log: spec.access_log.as_deref().map(|path| {
            let path = Path::new(path.trim());
            AccessLogOptions {
                path: match data_dir {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.to_path_buf(),
                },
                buffer: ACCESS_LOG_BUFFER,
            }
        }),
        rate_limit: spec.rate_limit.as_ref().map(|limit| RateLimitOptions {
            per_second: limit.per_second(),
            burst: limit.burst(),
            key: match limit
                .key_header()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
            {
                Some(name) => RateLimitKey::Header(name),
                None => RateLimitKey::ClientIp,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn default_spec_gives_default_options() {
        assert_eq!(options_for(&ProxySpec::default()), ProxyOptions::default());
    }

    #[test]
    fn every_key_is_carried_over() {
        let spec: ProxySpec = serde_json::from_str(
            r#"{
                "connect_timeout": "2s",
                "idle_timeout": "75s",
                "max_connections": 500,
                "upstream_keepalive": 8,
                "trusted_proxies": ["10.0.0.0/8"],
                "proxy_protocol": true,
                "access_log": "logs/web-access.log",
                "rate_limit": {"rate": 120, "per": "1m", "key": "header:X-Api-Key"}
            }"#,
        )
        .unwrap();
        let o = options_in(&spec, Some(Path::new("/data")));
        assert_eq!(o.connect_timeout, Duration::from_secs(2));
        assert_eq!(o.idle_timeout, Duration::from_secs(75));
        assert_eq!(o.response_header_timeout, Duration::from_secs(60));
        assert_eq!(o.max_connections, 500);
        assert_eq!(o.max_idle_per_upstream, 8);
        assert!(o.trusted_proxies[0].contains("10.9.9.9".parse().unwrap()));
        assert!(o.proxy_protocol);
        assert_eq!(
            o.access_log.unwrap().path,
            Path::new("/data/logs/web-access.log")
        );
        let limit = o.rate_limit.unwrap();
        assert!((limit.per_second - 2.0).abs() < 1e-9);
        assert_eq!(limit.burst, 120);
        assert_eq!(
            limit.key,
            RateLimitKey::Header(http::HeaderName::from_static("x-api-key"))
        );
    }
}
