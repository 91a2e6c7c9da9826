//! From a service's `[proxy]` spec to the proxy's runtime options.

use ferry_core::proxy_spec::ProxySpec;
use ferry_proxy::ProxyOptions;

pub fn options_for(spec: &ProxySpec) -> ProxyOptions {
    let _ = spec;
    ProxyOptions::default()
}
