//! Readiness and liveness probes: one HTTP GET or TCP connect, with a timeout,
//! on a fresh connection each time (as kubelet does).

use ferry_core::spec::ProbeSpec;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one probe saw: pass or fail, and a short description for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    pub detail: String,
}

pub async fn check(probe: &ProbeSpec, addr: SocketAddr) -> ProbeResult {
    let timeout = probe.timeout.0;
    let work = async {
        match &probe.http {
            Some(path) => http_get(addr, path).await,
            None => TcpStream::connect(addr)
                .await
                .map(|_| ProbeResult {
                    ok: true,
                    detail: "TCP connect ok".into(),
                })
                .map_err(|e| format!("TCP connect to {addr}: {e}")),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => ProbeResult {
            ok: false,
            detail: e,
        },
        Err(_) => ProbeResult {
            ok: false,
            detail: format!(
                "no answer within timeout ({})",
                ferry_core::duration::Dur(timeout)
            ),
        },
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<ProbeResult, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("GET {path}: connect to {addr}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ferry-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    // The status line is all a probe needs.
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP answer"))?;
    Ok(ProbeResult {
        ok: (200..300).contains(&status),
        detail: format!("GET {path} → HTTP {status}"),
    })
}

/// Sleep, but at most until `max`; used between probes.
pub fn interval(probe: &ProbeSpec) -> Duration {
    probe.interval.0.max(Duration::from_millis(10))
}
