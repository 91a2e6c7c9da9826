//! `tls`: a certificate chain valid for the name, not expiring soon.
//!
//! The handshake is let through whatever the certificate is, so that the
//! check can say what is wrong with it (and when it expires) rather than
//! only that the handshake failed; rustls's own verdict is recorded and
//! reported. No request is sent over the connection.
use crate::tcp::{connect, os_error};
use crate::{Context, Finding};
use ferry_core::validation::CheckSpec;
use ferry_core::validation::spec::defaults;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;

/// Debian's and Alpine's bundle of the system's trusted roots.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const DAY: i64 = 86_400;

pub(crate) async fn run(check: &CheckSpec, ctx: &Context) -> Finding {
    let Some(address) = check.address.as_deref() else {
        return Finding::fail(None, "a tls check needs `address = \"host:port\"`");
    };
    let name = check
        .server_name
        .clone()
        .unwrap_or_else(|| host_of(address));
    let Ok(server_name) = ServerName::try_from(name.clone()) else {
        return Finding::fail(
            None,
            format!(
                "\"{name}\" is neither a DNS name nor an IP address to check a certificate against"
            ),
        );
    };
    let verifier = match Recorder::new(check, ctx) {
        Ok(v) => Arc::new(v),
        Err(why) => return Finding::fail(None, why),
    };
    let provider = ring_provider();
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth(),
        Err(e) => return Finding::fail(None, format!("cannot set up TLS: {e}")),
    };
    let tcp = match connect(address).await {
        Ok((s, _)) => s,
        Err(why) => return Finding::fail(None, why),
    };
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await;
    let seen = verifier
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(Seen { leaf, verdict }) = seen else {
        return match handshake {
            Err(e) => Finding::fail(None, handshake_problem(address, &e)),
            Ok(_) => Finding::fail(
                None,
                format!("{address} completed a TLS handshake without presenting a certificate"),
            ),
        };
    };
    let not_after = not_after(&leaf);
    let value = not_after.map(|t| expiry_text(t, now()));
    let names = leaf_names(&leaf);
    if let Err(e) = verdict {
        return Finding::fail(
            value,
            format!("{address}: {}", cert_problem(&e, &names, &name)),
        );
    }
    match handshake {
        Ok(mut tls) => {
            let _ = tls.shutdown().await;
        }
        Err(e) => return Finding::fail(value, handshake_problem(address, &e)),
    }
    let Some(not_after) = not_after else {
        return Finding::fail(
            None,
            format!("{address}: cannot read the certificate's expiry date (notAfter)"),
        );
    };
    judge(address, &name, not_after, now(), check)
}

/// rustls on ring, as the rest of Ferry uses it. rustls 0.23.48
/// deprecates ring's provider for lacking post-quantum key exchange, which
/// does not matter to a check that only reads a certificate.
#[allow(deprecated)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Expiry against `warn_days` and `critical_days`, for a certificate that
/// is otherwise valid.
fn judge(address: &str, name: &str, not_after: i64, now: i64, check: &CheckSpec) -> Finding {
    let warn = check.warn_days.unwrap_or(defaults::TLS_DAYS.0);
    let critical = check.critical_days.unwrap_or(defaults::TLS_DAYS.1);
    let left = not_after - now;
    let value = Some(expiry_text(not_after, now));
    let date = date(not_after);
    if left <= i64::from(critical) * DAY {
        Finding::fail(
            value,
            format!(
                "certificate of {address} expires on {date}, within critical_days = {critical}"
            ),
        )
    } else if left <= i64::from(warn) * DAY {
        Finding::warn(
            value,
            format!("certificate of {address} expires on {date}, within warn_days = {warn}"),
        )
    } else {
        Finding::pass(
            value,
            format!(
                "certificate of {address} is trusted and valid for {name} until {date}, beyond warn_days = {warn}"
            ),
        )
    }
}

/// "expires in 12 days (2027-01-05)" or "expired 3 days ago (…)".
fn expiry_text(not_after: i64, now: i64) -> String {
    let left = not_after - now;
    let days = |n: i64| {
        if n == 1 {
            "1 day".to_string()
        } else {
            format!("{n} days")
        }
    };
    if left >= 0 {
        format!("expires in {} ({})", days(left / DAY), date(not_after))
    } else {
        format!("expired {} ago ({})", days(-left / DAY), date(not_after))
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The host of `host:port`, without an IPv6 address's brackets.
fn host_of(address: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Why rustls's verifier rejected the chain, in a sentence.
fn cert_problem(e: &TlsError, names: &[String], name: &str) -> String {
    let whose = if names.is_empty() {
        "the certificate".to_string()
    } else {
        format!("certificate for {}", names.join(", "))
    };
    let TlsError::InvalidCertificate(ce) = e else {
        return format!("{whose} was rejected: {e}");
    };
    match ce {
        CertificateError::NotValidForName => {
            format!("{whose} is not valid for {name} (NotValidForName)")
        }
        CertificateError::NotValidForNameContext { presented, .. } if names.is_empty() => {
            format!(
                "certificate for {} is not valid for {name} (NotValidForName)",
                presented.join(", ")
            )
        }
        CertificateError::NotValidForNameContext { .. } => {
            format!("{whose} is not valid for {name} (NotValidForName)")
        }
        CertificateError::UnknownIssuer => {
            format!("{whose} is issued by an unknown authority (UnknownIssuer)")
        }
        CertificateError::Expired => format!("{whose} has expired (Expired)"),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!(
                "{whose} expired on {} (Expired)",
                date(not_after.as_secs() as i64)
            )
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("{whose} is not valid yet (NotValidYet)")
        }
        CertificateError::BadSignature => {
            format!("{whose} has a bad signature in its chain (BadSignature)")
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!("{whose} is not for server authentication (InvalidPurpose)")
        }
        CertificateError::BadEncoding => {
            format!("{whose} is not a well-formed X.509 certificate (BadEncoding)")
        }
        CertificateError::Other(other) => match other.to_string().as_str() {
            "CaUsedAsEndEntity" => format!("{whose} is a CA's, not a server's (CaUsedAsEndEntity)"),
            why => format!("{whose} was rejected ({why})"),
        },
        _ => format!("{whose} was rejected: {e}"),
    }
}

/// Why the handshake failed, in a sentence naming the address.
fn handshake_problem(address: &str, e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    {
        Some(TlsError::InvalidMessage(m)) => {
            format!("{address} does not speak TLS: its answer is not a TLS record ({m:?})")
        }
        Some(TlsError::AlertReceived(alert)) => {
            format!("{address} refused the TLS handshake (alert: {alert:?})")
        }
        Some(other) => format!("TLS handshake with {address} failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("{address} closed the connection during the TLS handshake (is it a TLS port?)")
        }
        None => format!("TLS handshake with {address} failed: {}", os_error(e)),
    }
}

/// What the server presented, and rustls's verdict on it.
#[derive(Debug)]
struct Seen {
    leaf: CertificateDer<'static>,
    verdict: Result<(), TlsError>,
}

/// A verifier that asks rustls's WebPKI verifier, records its verdict and
/// the leaf, and lets the handshake go on whatever the verdict (handshake
/// signatures are still checked).
#[derive(Debug)]
struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Seen>>,
}

impl Recorder {
    /// Trusting Mozilla's roots, the system's bundle when there is one, and
    /// the check's `ca_file`.
    fn new(check: &CheckSpec, ctx: &Context) -> Result<Recorder, String> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Ok(certs) = CertificateDer::pem_file_iter(SYSTEM_BUNDLE) {
            roots.add_parsable_certificates(certs.filter_map(Result::ok));
        }
        if let Some(file) = &check.ca_file {
            let path = ctx.base_dir.join(file);
            let shown = path.display();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect())
                .map_err(|e| match e {
                    pem::Error::Io(e) => format!("cannot read ca_file {shown}: {}", os_error(&e)),
                    e => format!("ca_file {shown} is not valid PEM: {e}"),
                })?;
            if certs.is_empty() {
                return Err(format!(
                    "ca_file {shown} holds no PEM certificate (BEGIN CERTIFICATE)"
                ));
            }
            if roots.add_parsable_certificates(certs).0 == 0 {
                return Err(format!(
                    "no certificate in ca_file {shown} can be used as a trusted root"
                ));
            }
        }
        let provider = ring_provider();
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("cannot set up certificate verification: {e}"))?;
        Ok(Recorder {
            inner,
            seen: Mutex::new(None),
        })
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ());
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seen {
            leaf: end_entity.clone().into_owned(),
            verdict,
        });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

// A few fields of an X.509 certificate, read from its DER without a
// parser crate: only what the messages need.

/// One DER element (single-byte tag, definite length): its tag, its
/// contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The element at the front of `input`, if it has tag `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    der(input).and_then(|(t, body, rest)| (t == tag).then_some((body, rest)))
}

const SEQUENCE: u8 = 0x30;

/// The contents of `validity` and what follows it in `tbsCertificate`.
fn validity(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    // [0] EXPLICIT version, absent in v1 certificates.
    let mut rest = expect(tbs, 0xa0).map_or(tbs, |(_, rest)| rest);
    // serialNumber, signature, issuer.
    for tag in [0x02, SEQUENCE, SEQUENCE] {
        rest = expect(rest, tag)?.1;
    }
    expect(rest, SEQUENCE)
}

/// The leaf's notAfter, in seconds since the Unix epoch.
fn not_after(cert: &[u8]) -> Option<i64> {
    let (validity, _) = validity(cert)?;
    let (_, _, rest) = der(validity)?;
    let (tag, time, _) = der(rest)?;
    der_time(tag, time)
}

/// UTCTime (tag 0x17, `YYMMDDHHMMSSZ`, 50-99 meaning 19xx) or
/// GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`), as seconds since the epoch.
fn der_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |s: &[u8]| s.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(&digits[..2]);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map(|i| num(&rest[i..i + 2]));
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61;
    valid.then(|| days_from_civil(year, month, day) * DAY + hour * 3600 + minute * 60 + second)
}

/// The DNS names and IP addresses of the leaf's subjectAltName.
fn leaf_names(cert: &[u8]) -> Vec<String> {
    const SAN: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
    let mut names = Vec::new();
    let Some((_, rest)) = validity(cert) else {
        return names;
    };
    // subject, subjectPublicKeyInfo, then optional [1] and [2] unique IDs
    // before [3] extensions.
    let Some(mut rest) = expect(rest, SEQUENCE)
        .and_then(|(_, r)| expect(r, SEQUENCE))
        .map(|(_, r)| r)
    else {
        return names;
    };
    let mut extensions = None;
    while let Some((tag, body, next)) = der(rest) {
        if tag == 0xa3 {
            extensions = expect(body, SEQUENCE).map(|(b, _)| b);
            break;
        }
        rest = next;
    }
    let mut list = extensions.unwrap_or_default();
    while let Some((ext, next)) = expect(list, SEQUENCE) {
        list = next;
        let Some((oid, mut fields)) = expect(ext, 0x06) else {
            continue;
        };
        if oid != SAN {
            continue;
        }
        if let Some((_, after)) = expect(fields, 0x01) {
            fields = after; // critical
        }
        let Some((mut general_names, _)) =
            expect(fields, 0x04).and_then(|(v, _)| expect(v, SEQUENCE))
        else {
            break;
        };
        while let Some((tag, body, next)) = der(general_names) {
            general_names = next;
            match (tag, body.len()) {
                (0x82, _) => names.push(String::from_utf8_lossy(body).into_owned()),
                (0x87, 4) => names.push(
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(body).unwrap_or_default())
                        .to_string(),
                ),
                (0x87, 16) => names.push(
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(body).unwrap_or_default())
                        .to_string(),
                ),
                _ => {}
            }
        }
        break;
    }
    names
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days before each month's first in a common year.
const MONTH_START: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];

/// Days from 1970-01-01 to `year-month-day` (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Leap years in 1..=y.
    let leaps = |y: i64| y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400);
    let year_start = 365 * (year - 1970) + leaps(year - 1) - leaps(1969);
    let leap_day = i64::from(month > 2 && is_leap(year));
    year_start + MONTH_START[(month - 1) as usize] + leap_day + day - 1
}

/// `YYYY-MM-DD` of a time in seconds since the epoch.
fn date(secs: i64) -> String {
    let days = secs.div_euclid(DAY);
    // A year no later than the right one, then forward to it.
    let mut year = 1970 + days.div_euclid(if days < 0 { 365 } else { 366 });
    while days_from_civil(year + 1, 1, 1) <= days {
        year += 1;
    }
    let mut month = 12;
    while days_from_civil(year, month, 1) > days {
        month -= 1;
    }
    let day = days - days_from_civil(year, month, 1) + 1;
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::validation::{CheckKind, Status};
    use rustls::pki_types::PrivateKeyDer;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::process::Command;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

    /// A test CA (ca.pem, ca.key) in a new directory.
    fn pki() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "req", "-x509", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "365",
        ];
        args.extend(EC);
        args.extend(["-subj", "/CN=Ferry Test CA"]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(dir.path(), &args);
        dir
    }

    /// `NAME.pem` and `NAME.key`: a server certificate for `dns`, from the
    /// test CA, valid for `days`.
    fn leaf(dir: &Path, file: &str, dns: &str, days: u32) {
        let (key, csr, ext, pem) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.ext"),
            format!("{file}.pem"),
        );
        let subj = format!("/CN={dns}");
        let mut args = vec![
            "req", "-new", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj,
        ];
        args.extend(EC);
        openssl(dir, &args);
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName=DNS:{dns}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        let days = days.to_string();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                &days,
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }

    /// `self.pem`/`self.key`: self-signed for localhost, not from the CA;
    /// a CA certificate itself if `ca`.
    fn self_signed(dir: &Path, ca: bool) {
        let mut args = vec![
            "req", "-x509", "-nodes", "-keyout", "self.key", "-out", "self.pem", "-days", "90",
        ];
        args.extend(EC);
        args.extend([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ]);
        // openssl marks a self-signed certificate as a CA unless told not to.
        if !ca {
            args.extend(["-addext", "basicConstraints=critical,CA:FALSE"]);
        }
        openssl(dir, &args);
    }

    /// A TLS server presenting `NAME.pem` on a loopback port.
    async fn serve(dir: &Path, file: &str) -> SocketAddr {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join(format!("{file}.pem")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{file}.key"))).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let _ = tls.read(&mut [0u8; 64]).await;
                    }
                });
            }
        });
        addr
    }

    fn ctx(dir: &Path) -> Context {
        Context::for_tests(dir)
    }

    fn check(address: &str, server_name: Option<&str>, ca_file: Option<&str>) -> CheckSpec {
        let mut c = CheckSpec::new("cert", CheckKind::Tls);
        c.address = Some(address.to_string());
        c.server_name = server_name.map(str::to_string);
        c.ca_file = ca_file.map(str::to_string);
        c
    }

    async fn run_against(dir: &Path, file: &str, server_name: &str) -> Finding {
        let addr = serve(dir, file).await;
        run(
            &check(&addr.to_string(), Some(server_name), Some("ca.pem")),
            &ctx(dir),
        )
        .await
    }

    /// `value` says the certificate expires in `days` days, or one fewer
    /// when a second has passed since it was made.
    fn expires_in(value: Option<&str>, days: i64) -> bool {
        let value = value.unwrap_or_default();
        let said = |d: i64| value.starts_with(&format!("expires in {d} days (20"));
        (said(days) || said(days - 1)) && value.ends_with(')')
    }

    #[tokio::test]
    async fn a_valid_certificate_passes_with_its_expiry() {
        let dir = pki();
        leaf(dir.path(), "ok", "localhost", 90);
        let f = run_against(dir.path(), "ok", "localhost").await;
        assert_eq!(f.status, Status::Passed, "{f:?}");
        assert!(expires_in(f.value.as_deref(), 90), "{f:?}");
        assert!(
            f.reason.contains("valid for localhost until 20"),
            "{}",
            f.reason
        );
    }

    #[tokio::test]
    async fn the_server_name_defaults_to_the_host_and_every_address_is_tried() {
        let dir = pki();
        leaf(dir.path(), "ok", "localhost", 90);
        let addr = serve(dir.path(), "ok").await;
        // localhost may resolve to ::1 first, where nothing listens.
        let address = format!("localhost:{}", addr.port());
        let f = run(&check(&address, None, Some("ca.pem")), &ctx(dir.path())).await;
        assert_eq!(f.status, Status::Passed, "{f:?}");
    }

    #[tokio::test]
    async fn expiring_within_critical_days_fails() {
        let dir = pki();
        leaf(dir.path(), "soon", "localhost", 3);
        let f = run_against(dir.path(), "soon", "localhost").await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert!(expires_in(f.value.as_deref(), 3), "{f:?}");
        assert!(
            f.reason.ends_with("within critical_days = 7"),
            "{}",
            f.reason
        );
    }

    #[tokio::test]
    async fn expiring_within_warn_days_warns() {
        let dir = pki();
        leaf(dir.path(), "month", "localhost", 20);
        let f = run_against(dir.path(), "month", "localhost").await;
        assert_eq!(f.status, Status::Warning, "{f:?}");
        assert!(expires_in(f.value.as_deref(), 20), "{f:?}");
        assert!(f.reason.ends_with("within warn_days = 30"), "{}", f.reason);
    }

    #[tokio::test]
    async fn thresholds_come_from_the_check() {
        let dir = pki();
        leaf(dir.path(), "month", "localhost", 20);
        let addr = serve(dir.path(), "month").await;
        let mut c = check(&addr.to_string(), Some("localhost"), Some("ca.pem"));
        c.warn_days = Some(10);
        c.critical_days = Some(5);
        let f = run(&c, &ctx(dir.path())).await;
        assert_eq!(f.status, Status::Passed, "{f:?}");
        c.critical_days = Some(25);
        let f = run(&c, &ctx(dir.path())).await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_fails() {
        let dir = pki();
        leaf(dir.path(), "ok", "localhost", 90);
        let f = run_against(dir.path(), "ok", "wrong.example").await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert!(
            f.reason.ends_with(
                "certificate for localhost is not valid for wrong.example (NotValidForName)"
            ),
            "{}",
            f.reason
        );
        assert!(expires_in(f.value.as_deref(), 90), "{f:?}");
    }

    #[tokio::test]
    async fn a_self_signed_certificate_is_from_an_unknown_authority() {
        let dir = pki();
        self_signed(dir.path(), false);
        let f = run_against(dir.path(), "self", "localhost").await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert!(
            f.reason.ends_with(
                "certificate for localhost is issued by an unknown authority (UnknownIssuer)"
            ),
            "{}",
            f.reason
        );
        assert!(expires_in(f.value.as_deref(), 90), "{f:?}");
    }

    #[tokio::test]
    async fn a_ca_certificate_serving_as_the_leaf_fails() {
        let dir = pki();
        self_signed(dir.path(), true);
        let f = run_against(dir.path(), "self", "localhost").await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert!(
            f.reason.ends_with(
                "certificate for localhost is a CA's, not a server's (CaUsedAsEndEntity)"
            ),
            "{}",
            f.reason
        );
    }

    #[tokio::test]
    async fn without_ca_file_the_test_ca_is_not_trusted() {
        let dir = pki();
        leaf(dir.path(), "ok", "localhost", 90);
        let addr = serve(dir.path(), "ok").await;
        let f = run(
            &check(&addr.to_string(), Some("localhost"), None),
            &ctx(dir.path()),
        )
        .await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert!(f.reason.contains("(UnknownIssuer)"), "{}", f.reason);
    }

    #[tokio::test]
    async fn a_missing_ca_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let f = run(
            &check("127.0.0.1:1", None, Some("nope.pem")),
            &ctx(dir.path()),
        )
        .await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert!(f.reason.starts_with("cannot read ca_file "), "{}", f.reason);
        assert!(
            f.reason.ends_with("nope.pem: no such file or directory"),
            "{}",
            f.reason
        );
    }

    #[tokio::test]
    async fn a_closed_port_fails_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let dir = tempfile::tempdir().unwrap();
        let f = run(&check(&addr.to_string(), None, None), &ctx(dir.path())).await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert_eq!(
            f.reason,
            format!("cannot connect to {addr}: connection refused")
        );
    }

    #[tokio::test]
    async fn a_plain_tcp_server_does_not_speak_tls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.read(&mut [0u8; 1024]).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let f = run(
            &check(&addr.to_string(), Some("localhost"), None),
            &ctx(dir.path()),
        )
        .await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert!(
            f.reason.starts_with(&format!("{addr} does not speak TLS")),
            "{}",
            f.reason
        );
    }

    #[tokio::test]
    async fn a_server_that_hangs_up_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.read(&mut [0u8; 1024]).await;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let f = run(
            &check(&addr.to_string(), Some("localhost"), None),
            &ctx(dir.path()),
        )
        .await;
        assert_eq!(f.status, Status::Failed, "{f:?}");
        assert!(f.reason.contains(&addr.to_string()), "{}", f.reason);
    }

    #[test]
    fn expiry_against_thresholds() {
        let c = CheckSpec::new("cert", CheckKind::Tls);
        let now = 1_799_150_400;
        let status = |left: i64| judge("db:5432", "db", now + left, now, &c).status;
        assert_eq!(status(7 * DAY), Status::Failed);
        assert_eq!(status(7 * DAY + 1), Status::Warning);
        assert_eq!(status(30 * DAY), Status::Warning);
        assert_eq!(status(30 * DAY + 1), Status::Passed);
        assert_eq!(status(-DAY), Status::Failed);
        let f = judge("db:5432", "db", now + 12 * DAY + 5, now, &c);
        assert_eq!(f.value.as_deref(), Some("expires in 12 days (2027-01-17)"));
        assert_eq!(
            f.reason,
            "certificate of db:5432 expires on 2027-01-17, within warn_days = 30"
        );
        assert_eq!(expiry_text(now + DAY, now), "expires in 1 day (2027-01-06)");
        assert_eq!(
            expiry_text(now - 3 * DAY, now),
            "expired 3 days ago (2027-01-02)"
        );
    }

    #[test]
    fn der_times() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999)); // 2049
        assert_eq!(der_time(0x17, b"500101000000Z"), Some(-631_152_000)); // 1950
        assert_eq!(der_time(0x18, b"20270105120000Z"), Some(1_799_150_400));
        assert_eq!(der_time(0x18, b"20240229000000Z"), Some(1_709_164_800));
        assert_eq!(der_time(0x18, b"20230229000000Z"), None);
        assert_eq!(der_time(0x17, b"2701051200Z"), None);
        assert_eq!(der_time(0x18, b"270105120000Z"), None);
        assert_eq!(der_time(0x17, b"270105120000"), None);
    }

    #[test]
    fn dates_round_trip() {
        for days in (-800_000..3_000_000).step_by(97) {
            let text = date(days * DAY + 3_600);
            let (y, m, d) = (
                &text[..text.len() - 6],
                &text[text.len() - 5..text.len() - 3],
                &text[text.len() - 2..],
            );
            let back = days_from_civil(y.parse().unwrap(), m.parse().unwrap(), d.parse().unwrap());
            assert_eq!(back, days, "{text}");
        }
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_799_150_400), "2027-01-05");
        assert_eq!(date(253_402_300_799), "9999-12-31");
    }

    #[test]
    fn the_leaf_is_read_from_der() {
        let dir = pki();
        leaf(dir.path(), "ok", "localhost", 90);
        let der = CertificateDer::from_pem_file(dir.path().join("ok.pem")).unwrap();
        let left = not_after(&der).unwrap() - now();
        assert!((89 * DAY..=90 * DAY).contains(&left), "{left}");
        assert_eq!(leaf_names(&der), ["localhost"]);
        assert_eq!(not_after(&der[..der.len() - 1]), None);
    }

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("example.com:443"), "example.com");
        assert_eq!(host_of("[::1]:443"), "::1");
    }
}
