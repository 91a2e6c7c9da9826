//! `tcp`: a dependency accepts connections.
use crate::Finding;
use ferry_core::validation::CheckSpec;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::net::TcpStream;

pub(crate) async fn run(check: &CheckSpec) -> Finding {
    let Some(address) = check.address.as_deref() else {
        return Finding::fail(None, "a tcp check needs `address = \"host:port\"`");
    };
    let started = Instant::now();
    match connect(address).await {
        Ok((_stream, peer)) => {
            let ms = started.elapsed().as_millis();
            let via = if peer.to_string() == address {
                String::new()
            } else {
                format!(" (at {peer})")
            };
            Finding::pass(
                Some(format!("connected in {ms} ms")),
                format!("{address}{via} accepted a connection in {ms} ms"),
            )
        }
        Err(why) => Finding::fail(None, why),
    }
}

/// Resolve `address` (`host:port`) and connect to each of its addresses in
/// turn until one accepts. The error is a reason naming the address and
/// what the OS said for each one tried.
pub(crate) async fn connect(address: &str) -> Result<(TcpStream, SocketAddr), String> {
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(address).await {
        Ok(a) => a.collect(),
        Err(e) => return Err(format!("cannot resolve {address}: {}", os_error(&e))),
    };
    if addrs.is_empty() {
        return Err(format!("{address} resolves to no address"));
    }
    let mut errors = Vec::new();
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok((s, *addr)),
            Err(e) => errors.push((*addr, os_error(&e))),
        }
    }
    if let [(addr, e)] = errors.as_slice()
        && addr.to_string() == address
    {
        return Err(format!("cannot connect to {address}: {e}"));
    }
    let tried: Vec<String> = errors.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    Err(format!(
        "cannot connect to {address} ({})",
        tried.join("; ")
    ))
}

/// What the OS said, without Rust's " (os error N)" suffix and with a
/// lower-case first letter, to read inside a sentence.
pub(crate) fn os_error(e: &std::io::Error) -> String {
    let text = os_error_text(e);
    let mut chars = text.chars();
    match chars.next() {
        Some(c)
            if c.is_ascii_uppercase()
                && !chars.clone().next().is_some_and(|n| n.is_ascii_uppercase()) =>
        {
            c.to_ascii_lowercase().to_string() + chars.as_str()
        }
        _ => text,
    }
}

/// What the OS said, without Rust's " (os error N)" suffix.
pub(crate) fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::validation::{CheckKind, Status};

    fn check(address: &str) -> CheckSpec {
        let mut c = CheckSpec::new("dep", CheckKind::Tcp);
        c.address = Some(address.to_string());
        c
    }

    #[tokio::test]
    async fn a_listening_port_passes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let f = run(&check(&addr.to_string())).await;
        assert_eq!(f.status, Status::Passed, "{f:?}");
        let value = f.value.unwrap();
        assert!(
            value.starts_with("connected in ") && value.ends_with(" ms"),
            "{value}"
        );
        assert!(f.reason.contains(&addr.to_string()), "{}", f.reason);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let f = run(&check(&addr.to_string())).await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert_eq!(
            f.reason,
            format!("cannot connect to {addr}: connection refused")
        );
    }

    #[tokio::test]
    async fn an_address_without_a_port_fails() {
        let f = run(&check("127.0.0.1")).await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert!(
            f.reason.starts_with("cannot resolve 127.0.0.1: "),
            "{}",
            f.reason
        );
    }

    #[test]
    fn os_errors_read_inside_a_sentence() {
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(os_error(&e), "connection refused");
        let e = std::io::Error::other("TLS went wrong");
        assert_eq!(os_error(&e), "TLS went wrong");
    }
}
