//! systemd support for `ferry serve`: readiness and reload notifications
//! (the sd_notify protocol, no C library), log lines whose priority the
//! journal understands, and the `ferry.service` unit that `ferry
//! install-service` writes.
//!
//! # How to wire it (main.rs)
//!
//! * Logging: in `init_logging`, when the text format is asked for and
//!   [`under_journal`] is true, install [`JournalFormat`] instead of the
//!   default format (no timestamps, no colours, a `<N>` priority prefix):
//!   `builder.with_ansi(false).event_format(ferry::systemd::JournalFormat).init()`.
//!   On a `registry()` stack, [`journal_layer`] is the same as a layer.
//! * `ferry serve`: call [`notify_ready`] when `ferry_server::serve`'s
//!   `ready` sender fires (the API listens), which must happen within
//!   `TimeoutStartSec=` (60 s); [`notify_reloading`] just before re-executing
//!   for `Exit::Upgrade` (the new image then says ready again);
//!   [`notify_stopping`] when `serve` returns `Exit::Detached` or
//!   `Exit::Shutdown`; [`notify_status`] for anything else worth showing in
//!   `systemctl status`. Each returns `Ok(false)` when not run by systemd;
//!   errors are for the caller to log or ignore (this module logs nothing).
//! * `ferry install-service`: build [`UnitOptions`] from absolute paths
//!   without `..` (systemd refuses them): `std::env::current_exe()`,
//!   `std::path::absolute(data_dir)`, the directory of ferry.toml. Call
//!   [`install`] with [`DEFAULT_UNIT_PATH`] or `--unit-file PATH` (not
//!   `--output`, the CLI's global output-format flag) and print the message
//!   it returns.
//!
//! The unit runs `ferry serve` with `KillMode=process`: stopping or
//! restarting the unit signals the control plane only, so the data plane
//! and the instances must not be in a place systemd cleans up on stop
//! (this is why the unit has no `PrivateTmp=` and no `RuntimeDirectory=`).

use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

// ---------------------------------------------------------------------------
// sd_notify

/// Send `state` (newline-separated `KEY=VALUE` assignments, e.g.
/// `"READY=1\nSTATUS=serving"`) to the service manager as one datagram on
/// the socket named by `NOTIFY_SOCKET`: a path, or an abstract socket
/// when it starts with `@`.
///
/// `Ok(false)`: `NOTIFY_SOCKET` is not set (not run by systemd with
/// `Type=notify`), nothing was sent. `Ok(true)`: sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(socket) => notify_socket(&socket, state).map(|()| true),
    }
}

/// `READY=1` with a status line: the service is up. Also the answer to
/// [`notify_reloading`] once the reload (upgrade) is done.
pub fn notify_ready(status: &str) -> io::Result<bool> {
    notify(&format!("READY=1\nSTATUS={}", one_line(status)))
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (the `CLOCK_MONOTONIC` time now,
/// in µs, which systemd 253 and later require with `RELOADING=1`). Send
/// [`notify_ready`] when the reload is done.
pub fn notify_reloading() -> io::Result<bool> {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        monotonic_usec()?
    ))
}

/// `STOPPING=1`: the control plane is shutting down.
pub fn notify_stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `STATUS=`: a one-line status shown by `systemctl status`. Line breaks
/// and other control characters become spaces.
pub fn notify_status(status: &str) -> io::Result<bool> {
    notify(&format!("STATUS={}", one_line(status)))
}

fn notify_socket(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        Some(b'/') => SocketAddr::from_pathname(socket)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET={:?} is neither an absolute path nor an abstract socket (@name)",
                    socket
                ),
            ));
        }
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "sent {sent} of {} bytes to NOTIFY_SOCKET={socket:?}",
                state.len()
            ),
        ));
    }
    Ok(())
}

fn monotonic_usec() -> io::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let usec = i128::from(now.tv_sec()) * 1_000_000 + i128::from(now.tv_nsec()) / 1_000;
    u64::try_from(usec).map_err(|_| io::Error::other("CLOCK_MONOTONIC is out of range"))
}

/// A value that cannot break the `KEY=VALUE\n` framing.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

// ---------------------------------------------------------------------------
// The journal

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` is set to
/// `<device>:<inode>` (decimal) and they are stderr's, as sd-daemon(3)
/// documents. A child whose stderr was redirected elsewhere inherits the
/// variable but does not match, so this is false for it.
pub fn under_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    fd_matches_journal_stream(io::stderr().as_fd(), &value)
}

fn fd_matches_journal_stream(fd: std::os::fd::BorrowedFd<'_>, value: &OsStr) -> bool {
    let Some((dev, ino)) = value.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    // fstat on a duplicate of the descriptor: no unsafe, no /proc.
    let Ok(file) = fd.try_clone_to_owned().map(std::fs::File::from) else {
        return false;
    };
    file.metadata()
        .is_ok_and(|meta| meta.dev() == dev && meta.ino() == ino)
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    Some((number(dev)?, number(ino)?))
}

/// The sd-daemon(3) priority prefix of a log line at `level`: `<3>` (err)
/// for ERROR, `<4>` (warning) for WARN, `<6>` (info) for INFO, `<7>`
/// (debug) for DEBUG and TRACE.
pub fn journal_prefix(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        Level::DEBUG | Level::TRACE => "<7>",
    }
}

/// A tracing event format for the journal: one line per event,
/// `<prio>LEVEL span{fields}: target: message field=value`, with the
/// [`journal_prefix`] of the event's level, no timestamp (the journal adds
/// one) and no ANSI colours. Line breaks inside an event are written as
/// `\n` so that the whole event stays one journal entry at its priority.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalFormat;

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = String::new();
        {
            // A writer of our own has no ANSI escapes, whatever the layer says.
            let mut w = Writer::new(&mut line);
            write!(w, "{} ", meta.level())?;
            if let Some(scope) = ctx.event_scope() {
                for span in scope.from_root() {
                    w.write_str(span.name())?;
                    let extensions = span.extensions();
                    if let Some(fields) = extensions.get::<FormattedFields<N>>()
                        && !fields.is_empty()
                    {
                        write!(w, "{{{fields}}}")?;
                    }
                    w.write_str(": ")?;
                }
            }
            write!(w, "{}: ", meta.target())?;
            ctx.format_fields(w.by_ref(), event)?;
        }
        writer.write_str(journal_prefix(meta.level()))?;
        let mut chars = line.trim_end_matches(['\n', '\r']).chars();
        while let Some(c) = chars.next() {
            match c {
                '\n' => writer.write_str("\\n")?,
                '\r' => writer.write_str("\\r")?,
                // ANSI escape sequences (CSI ... final byte), e.g. colours
                // in span fields formatted by a layer with ANSI on.
                '\x1b' => {
                    if chars.clone().next() == Some('[') {
                        chars.next();
                        for c in chars.by_ref() {
                            if ('\x40'..='\x7e').contains(&c) {
                                break;
                            }
                        }
                    }
                }
                c => writer.write_char(c)?,
            }
        }
        writer.write_char('\n')
    }
}

/// A `fmt` layer writing [`JournalFormat`] lines to stderr, without ANSI
/// colours (span fields included).
pub fn journal_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(io::stderr)
        .event_format(JournalFormat)
}

// ---------------------------------------------------------------------------
// The unit file

/// Where [`install`] writes the unit unless told otherwise.
pub const DEFAULT_UNIT_PATH: &str = "/etc/systemd/system/ferry.service";

/// What `ferry.service` is made of. Every path must be absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOptions {
    /// The `ferry` binary (`ExecStart=`, `ExecReload=`).
    pub binary: PathBuf,
    /// `--data-dir` of `ferry serve` and `ferry upgrade`.
    pub data_dir: PathBuf,
    /// `WorkingDirectory=`: where ferry.toml lives (and where instances run
    /// by default).
    pub config_dir: PathBuf,
    /// `User=`; root when `None`.
    pub user: Option<String>,
    /// `--api-addr` of `ferry serve` (an IP address and port).
    pub api_addr: Option<String>,
    /// `EnvironmentFile=-<path>` (e.g. for `FERRY_SECRET_KEY`); a missing
    /// file is ignored.
    pub environment_file: Option<PathBuf>,
}

/// Why the unit was not written.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot write the unit: {field} {value:?} {reason}")]
    BadOption {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "{path} already exists and is not the unit Ferry would write; pass --force to replace it, or --unit-file PATH to write somewhere else"
    )]
    Exists { path: PathBuf },
    #[error(
        "{path}: a systemd unit file's name must end in .service; pass --unit-file DIR/NAME.service"
    )]
    NotAServiceName { path: PathBuf },
    #[error(
        "cannot write {path}: {source}; run as root (e.g. with sudo), or pass --unit-file PATH to write somewhere else"
    )]
    PermissionDenied { path: PathBuf, source: io::Error },
    #[error(
        "cannot write {path}: the directory {dir} does not exist; create it, or pass --unit-file PATH to write somewhere else"
    )]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The complete text of `ferry.service` for `o`.
///
/// Values are written the way systemd reads each setting back: specifier
/// `%` is doubled everywhere; on the command lines (`ExecStart=`,
/// `ExecReload=`) and in `ReadWritePaths=`, a word with a space, a quote or
/// a backslash is double-quoted with `"` and `\` escaped, and on the
/// command lines `$` is doubled (systemd expands `$VAR` there);
/// `WorkingDirectory=` and `EnvironmentFile=` take the path as it is (systemd
/// does not unquote them). Values a unit file cannot hold are refused:
/// relative or non-UTF-8 paths, paths with `..` (systemd refuses them),
/// control characters (a newline among them), and, for the two settings
/// taken as they are, a trailing space or backslash (systemd would strip
/// the space or join the next line).
pub fn unit_text(o: &UnitOptions) -> Result<String, InstallError> {
    let binary = exec_word(&path_str("binary", &o.binary)?);
    let data_dir_str = path_str("data dir", &o.data_dir)?;
    let data_dir = exec_word(&data_dir_str);
    let config_dir_str = path_str("config dir", &o.config_dir)?;
    let working_directory = verbatim("config dir", &config_dir_str)?;

    let mut serve = format!("{binary} serve --data-dir {data_dir}");
    if let Some(addr) = &o.api_addr {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "API address",
                addr,
                "is not an IP address with a port (e.g. 127.0.0.1:7070)",
            ));
        }
        serve.push_str(" --api-addr ");
        serve.push_str(&exec_word(addr));
    }
    let reload = format!("{binary} upgrade --data-dir {data_dir}");
    // `-`: systemd skips a path that does not exist yet; `ferry serve`
    // creates its data dir on the first start.
    let read_write = format!(
        "{} {}",
        list_word(&format!("-{data_dir_str}")),
        list_word(&config_dir_str)
    );
    let user = match &o.user {
        None => None,
        Some(u) => Some(user_name(u)?),
    };
    let environment_file = match &o.environment_file {
        None => None,
        Some(p) => Some(verbatim(
            "environment file",
            &path_str("environment file", p)?,
        )?),
    };

    let mut t = String::new();
    t.push_str(
        "# Written by `ferry install-service`; `ferry install-service --force`\n\
         # rewrites it. Put local additions in a drop-in (`systemctl edit`).\n\
         \n\
         [Unit]\n\
         Description=Ferry: zero-downtime releases of web services (control plane)\n",
    );
    let _ = writeln!(t, "Documentation={DOCUMENTATION}");
    t.push_str(
        "After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         # `ferry serve` says READY=1 when it serves. Only the main process may\n\
         # notify; `ferry upgrade` re-executes it in place, so its PID stays.\n\
         Type=notify\n\
         NotifyAccess=main\n",
    );
    let _ = writeln!(t, "ExecStart={serve}");
    t.push_str(
        "# `systemctl reload`: `ferry upgrade` replaces the control plane (same\n\
         # PID) and the data plane with the binary now on disk.\n",
    );
    let _ = writeln!(t, "ExecReload={reload}");
    let _ = writeln!(t, "WorkingDirectory={working_directory}");
    t.push_str(
        "# Stop and restart signal the control plane only. The data plane and the\n\
         # service instances outlive a control-plane restart and keep serving;\n\
         # the next `ferry serve` re-attaches to them. `ferry shutdown` stops\n\
         # them all.\n\
         KillMode=process\n\
         Restart=on-failure\n\
         RestartSec=1\n\
         TimeoutStartSec=60\n\
         TimeoutStopSec=30\n\
         LimitNOFILE=1048576\n\
         # Hardening that keeps the services Ferry spawns working. No PrivateTmp=:\n\
         # systemd deletes a unit's private /tmp when the unit stops, under the\n\
         # data plane and instances that keep running.\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=full\n\
         ProtectHome=read-only\n",
    );
    let _ = writeln!(t, "ReadWritePaths={read_write}");
    if let Some(user) = user {
        let _ = writeln!(t, "User={user}");
    }
    if let Some(file) = environment_file {
        t.push_str("# FERRY_SECRET_KEY and other settings of the daemon; ignored when missing.\n");
        let _ = writeln!(t, "EnvironmentFile=-{file}");
    }
    t.push_str(
        "\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
    );
    Ok(t)
}

/// `Documentation=` of the unit: the systemd pages for the settings it uses
/// (Ferry's own page is docs/systemd.md in its source).
const DOCUMENTATION: &str = "man:systemd.service(5) man:systemd.exec(5) man:systemd.kill(5)";

fn bad(field: &'static str, value: &str, reason: &str) -> InstallError {
    InstallError::BadOption {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// An absolute UTF-8 path without control characters.
fn path_str(field: &'static str, path: &Path) -> Result<String, InstallError> {
    let Some(s) = path.to_str() else {
        return Err(bad(
            field,
            &path.to_string_lossy(),
            "is not valid UTF-8, which a unit file cannot hold; use another path",
        ));
    };
    if !path.is_absolute() {
        return Err(bad(
            field,
            s,
            "is relative; systemd needs an absolute path (std::path::absolute)",
        ));
    }
    if s.contains('\n') {
        return Err(bad(
            field,
            s,
            "contains a newline, which a unit file cannot hold; use another path",
        ));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(bad(
            field,
            s,
            "contains `..`, which systemd refuses (\"path is not normalized\"); pass the path without it (realpath)",
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(bad(
            field,
            s,
            "contains a control character, which systemd refuses; use another path",
        ));
    }
    Ok(s.to_string())
}

/// A value taken as it is (`WorkingDirectory=`, `EnvironmentFile=`): only
/// specifiers are expanded, and the line's trailing whitespace is stripped
/// and a trailing backslash joins the next line.
fn verbatim(field: &'static str, s: &str) -> Result<String, InstallError> {
    if s.ends_with(' ') {
        return Err(bad(
            field,
            s,
            "ends with a space, which systemd strips from this setting; use another path",
        ));
    }
    if s.ends_with('\\') {
        return Err(bad(
            field,
            s,
            "ends with a backslash, which systemd reads as a line continuation in this setting; use another path",
        ));
    }
    Ok(s.replace('%', "%%"))
}

/// A word of `ExecStart=`/`ExecReload=`: quoted like [`list_word`], and
/// `$` doubled (systemd expands `$NAME` and `${NAME}` on command lines).
fn exec_word(s: &str) -> String {
    list_word(s).replace('$', "$$")
}

/// A word of a space-separated setting: `%` doubled; double-quoted, with
/// `"` and `\` backslash-escaped, when it holds a space, a quote or a
/// backslash.
fn list_word(s: &str) -> String {
    let s = s.replace('%', "%%");
    if !s.contains([' ', '"', '\'', '\\']) {
        return s;
    }
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// A user name or numeric ID systemd accepts in `User=` (the portable
/// subset: letters, digits, `_`, `.`, `-`, not starting with `-`).
fn user_name(u: &str) -> Result<String, InstallError> {
    let portable = u
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if u.is_empty()
        || u.len() > 255
        || !portable
        || u.starts_with('-')
        || u.chars().all(|c| c == '.')
    {
        return Err(bad(
            "user",
            u,
            "is not a valid user name (letters, digits, `_`, `.`, `-`, not starting with `-`)",
        ));
    }
    Ok(u.to_string())
}

/// Write the unit for `o` to `path` (mode 0644; [`DEFAULT_UNIT_PATH`]
/// normally), and return what to print: the file written and the commands
/// to run next. An existing file with the same content is left alone; a
/// different one is replaced only with `force`. The file is written to a
/// temporary file beside it and renamed into place, so it is never half
/// written.
pub fn install(o: &UnitOptions, path: &Path, force: bool) -> Result<String, InstallError> {
    let text = unit_text(o)?;
    let file_name = path.file_name().and_then(OsStr::to_str).unwrap_or("");
    let Some(unit_name) = file_name
        .strip_suffix(".service")
        .filter(|name| !name.is_empty())
    else {
        return Err(InstallError::NotAServiceName {
            path: path.to_path_buf(),
        });
    };
    let io_error = |source: io::Error| InstallError::Io {
        path: path.to_path_buf(),
        source,
    };
    let unchanged = match std::fs::read(path) {
        Ok(existing) if existing == text.as_bytes() => true,
        Ok(_) if !force => {
            return Err(InstallError::Exists {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(write_error(path, e)),
    };
    if !unchanged {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".ferry-unit.")
            .tempfile_in(dir)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => InstallError::NoDirectory {
                    path: path.to_path_buf(),
                    dir: dir.to_path_buf(),
                },
                _ => write_error(path, e),
            })?;
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io_error)?;
        tmp.write_all(text.as_bytes()).map_err(io_error)?;
        tmp.as_file().sync_all().map_err(io_error)?;
        let persisted = if force {
            tmp.persist(path)
        } else {
            tmp.persist_noclobber(path)
        };
        persisted.map_err(|e| match e.error.kind() {
            io::ErrorKind::AlreadyExists => InstallError::Exists {
                path: path.to_path_buf(),
            },
            _ => write_error(path, e.error),
        })?;
    }
    Ok(install_message(o, path, unit_name, unchanged))
}

fn write_error(path: &Path, source: io::Error) -> InstallError {
    match source.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            InstallError::PermissionDenied {
                path: path.to_path_buf(),
                source,
            }
        }
        _ => InstallError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

fn install_message(o: &UnitOptions, path: &Path, unit: &str, unchanged: bool) -> String {
    let shown = path.display();
    let mut m = if unchanged {
        format!("{shown} is already up to date\n")
    } else {
        format!("wrote {shown}\n")
    };
    m.push_str("next:\n");
    let in_unit_dir = path
        .parent()
        .is_some_and(|dir| UNIT_DIRS.iter().any(|d| dir == Path::new(d)));
    if !in_unit_dir {
        let name = format!("{unit}.service");
        let _ = writeln!(
            m,
            "  cp {} {}    # systemd does not read units from where it is",
            sh_word(&path.to_string_lossy()),
            sh_word(&format!("/etc/systemd/system/{name}"))
        );
    }
    if let Some(user) = &o.user
        && !o.data_dir.exists()
    {
        let _ = writeln!(
            m,
            "  install -d -m 0700 -o {} {}    # the data dir, owned by the service's user",
            sh_word(user),
            sh_word(&o.data_dir.to_string_lossy())
        );
    }
    let _ = writeln!(m, "  systemctl daemon-reload");
    let _ = writeln!(m, "  systemctl enable --now {unit}");
    let _ = writeln!(m, "  journalctl -u {unit} -f    # follow its logs");
    let _ = write!(
        m,
        "later, `systemctl reload {unit}` upgrades Ferry in place to the binary now on disk (it runs `ferry upgrade`)"
    );
    m
}

/// A word a POSIX shell reads back as `s`.
fn sh_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@,=".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    // --- sd_notify ---------------------------------------------------------

    #[test]
    fn notify_sends_one_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let state = "READY=1\nSTATUS=serving\nMAINPID=123";
        notify_socket(path.as_os_str(), state).unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], state.as_bytes());
    }

    #[test]
    fn notify_supports_abstract_sockets() {
        let name = format!(
            "ferry-test-notify-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        notify_socket(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn notify_refuses_other_addresses_and_reports_send_errors() {
        for socket in ["", "relative/path", "vsock:2:1234"] {
            let e = notify_socket(OsStr::new(socket), "READY=1").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{socket:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody-listens");
        assert!(notify_socket(missing.as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn notify_without_notify_socket_sends_nothing() {
        // Tests cannot unset the variable (that takes unsafe); when the test
        // run is not under systemd it is unset, and this checks Ok(false).
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            assert!(!notify("READY=1").unwrap());
            assert!(!notify_ready("serving").unwrap());
            assert!(!notify_reloading().unwrap());
            assert!(!notify_stopping().unwrap());
            assert!(!notify_status("x").unwrap());
        }
    }

    #[test]
    fn monotonic_clock_moves_forward_in_microseconds() {
        let a = monotonic_usec().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_usec().unwrap();
        assert!(b >= a + 2_000, "{a} then {b}");
        assert!(b - a < 10_000_000, "{a} then {b}: not microseconds");
    }

    #[test]
    fn status_values_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
        assert_eq!(one_line("déjà vu"), "déjà vu");
    }

    // --- journal -----------------------------------------------------------

    #[test]
    fn journal_stream_must_name_this_fd() {
        let a = tempfile::tempfile().unwrap();
        let b = tempfile::tempfile().unwrap();
        let meta = a.metadata().unwrap();
        let value = format!("{}:{}", meta.dev(), meta.ino());
        assert!(fd_matches_journal_stream(a.as_fd(), OsStr::new(&value)));
        assert!(!fd_matches_journal_stream(b.as_fd(), OsStr::new(&value)));
        let wrong_dev = format!("{}:{}", meta.dev() + 1, meta.ino());
        assert!(!fd_matches_journal_stream(
            a.as_fd(),
            OsStr::new(&wrong_dev)
        ));
        for bad in [
            "", ":", "1", "1:", ":2", "x:2", "1:2:3", "-1:2", "+1:2", " 1:2",
        ] {
            assert!(
                !fd_matches_journal_stream(a.as_fd(), OsStr::new(bad)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn journal_stream_parses_decimal_pairs() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(
            parse_journal_stream("18446744073709551615:0"),
            Some((u64::MAX, 0))
        );
        assert_eq!(parse_journal_stream("18446744073709551616:0"), None);
        assert_eq!(parse_journal_stream("0x8:1"), None);
    }

    #[test]
    fn journal_prefixes_follow_sd_daemon() {
        assert_eq!(journal_prefix(&Level::ERROR), "<3>");
        assert_eq!(journal_prefix(&Level::WARN), "<4>");
        assert_eq!(journal_prefix(&Level::INFO), "<6>");
        assert_eq!(journal_prefix(&Level::DEBUG), "<7>");
        assert_eq!(journal_prefix(&Level::TRACE), "<7>");
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Logs through the builder the way main.rs installs the format, with
    /// ANSI asked for: the format must still write none.
    fn capture(f: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(true)
            .with_writer(buffer.clone())
            .event_format(JournalFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        buffer.text()
    }

    #[test]
    fn journal_format_prefixes_each_level_without_timestamp_or_colour() {
        let out = capture(|| {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::info!(port = 8080, name = "web", "started");
            tracing::debug!("d");
            tracing::trace!("t");
        });
        let target = module_path!();
        assert_eq!(
            out,
            format!(
                "<3>ERROR {target}: e\n\
                 <4>WARN {target}: w\n\
                 <6>INFO {target}: started port=8080 name=\"web\"\n\
                 <7>DEBUG {target}: d\n\
                 <7>TRACE {target}: t\n"
            )
        );
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn journal_format_keeps_an_event_on_one_line() {
        let out = capture(|| {
            tracing::error!("first line\nsecond line\r\nthird");
            tracing::warn!(detail = "a\nb", "trailing newline\n");
        });
        let target = module_path!();
        assert_eq!(
            out,
            format!(
                "<3>ERROR {target}: first line\\nsecond line\\r\\nthird\n\
                 <4>WARN {target}: trailing newline\\n detail=\"a\\nb\"\n"
            )
        );
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn journal_format_writes_no_escape_character() {
        // tracing-subscriber escapes control characters in messages; span
        // fields coloured by a layer with ANSI on are stripped here.
        let out = capture(|| {
            let span = tracing::info_span!("colour", k = "v");
            let _span = span.enter();
            tracing::warn!("\x1b[31mred\x1b[0m plain");
        });
        assert!(!out.contains('\x1b'), "{out:?}");
        assert!(out.starts_with("<4>WARN colour{k=\"v\"}: "), "{out:?}");
        assert!(out.ends_with("plain\n"), "{out:?}");
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn journal_format_shows_spans_and_their_fields() {
        let out = capture(|| {
            let outer = tracing::info_span!("rollout", id = 7);
            let _outer = outer.enter();
            let inner = tracing::info_span!("step");
            let _inner = inner.enter();
            tracing::info!("held");
        });
        assert_eq!(
            out,
            format!("<6>INFO rollout{{id=7}}: step: {}: held\n", module_path!())
        );
    }

    #[test]
    fn journal_layer_composes_with_a_registry() {
        let subscriber = tracing_subscriber::registry().with(journal_layer());
        // It writes to stderr, so no event here: this checks that it stacks
        // on a registry and takes events.
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(Level::TRACE));
        });
    }

    // --- unit file -----------------------------------------------------------

    fn options() -> UnitOptions {
        UnitOptions {
            binary: "/usr/local/bin/ferry".into(),
            data_dir: "/var/lib/ferry".into(),
            config_dir: "/srv/app".into(),
            user: None,
            api_addr: None,
            environment_file: None,
        }
    }

    /// The value of the only `key=` line.
    fn setting(text: &str, key: &str) -> String {
        let prefix = format!("{key}=");
        let values: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect();
        assert_eq!(values.len(), 1, "{key}= in:\n{text}");
        values[0].to_string()
    }

    #[test]
    fn unit_has_every_setting() {
        let text = unit_text(&options()).unwrap();
        let expected = [
            ("Type", "notify"),
            ("NotifyAccess", "main"),
            (
                "ExecStart",
                "/usr/local/bin/ferry serve --data-dir /var/lib/ferry",
            ),
            (
                "ExecReload",
                "/usr/local/bin/ferry upgrade --data-dir /var/lib/ferry",
            ),
            ("WorkingDirectory", "/srv/app"),
            ("KillMode", "process"),
            ("Restart", "on-failure"),
            ("RestartSec", "1"),
            ("TimeoutStartSec", "60"),
            ("TimeoutStopSec", "30"),
            ("LimitNOFILE", "1048576"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "full"),
            ("ProtectHome", "read-only"),
            ("ReadWritePaths", "-/var/lib/ferry /srv/app"),
            ("After", "network-online.target"),
            ("Wants", "network-online.target"),
            ("WantedBy", "multi-user.target"),
        ];
        for (key, value) in expected {
            assert_eq!(setting(&text, key), value, "{key}");
        }
        assert!(setting(&text, "Description").starts_with("Ferry"));
        assert!(setting(&text, "Documentation").starts_with("man:"));
        for absent in [
            "User=",
            "EnvironmentFile=",
            "PrivateTmp=",
            "RuntimeDirectory=",
        ] {
            assert!(
                !text.lines().any(|l| l.starts_with(absent)),
                "{absent} in:\n{text}"
            );
        }
        assert!(!text.contains("--api-addr"));
        // Sections in order, each setting in its section.
        let unit = text.find("\n[Unit]\n").unwrap();
        let service = text.find("\n[Service]\n").unwrap();
        let install = text.find("\n[Install]\n").unwrap();
        assert!(unit < service && service < install);
        assert!(text.find("\nAfter=").unwrap() < service);
        assert!(text.find("\nKillMode=").unwrap() > service);
        assert!(text.find("\nKillMode=").unwrap() < install);
        assert!(text.find("\nWantedBy=").unwrap() > install);
        assert!(text.ends_with("WantedBy=multi-user.target\n"));
    }

    #[test]
    fn unit_says_why_kill_mode_is_process() {
        let text = unit_text(&options()).unwrap();
        let kill = text.find("KillMode=process").unwrap();
        let comment = &text[..kill];
        let comment = &comment[comment.rfind("\n\n").unwrap_or(0)..];
        assert!(
            comment.contains("outlive a control-plane restart"),
            "{comment}"
        );
        assert!(comment.contains("`ferry shutdown` stops"), "{comment}");
    }

    #[test]
    fn unit_optional_settings() {
        let o = UnitOptions {
            user: Some("ferry".into()),
            api_addr: Some("0.0.0.0:7070".into()),
            environment_file: Some("/etc/ferry/env".into()),
            ..options()
        };
        let text = unit_text(&o).unwrap();
        assert_eq!(setting(&text, "User"), "ferry");
        assert_eq!(setting(&text, "EnvironmentFile"), "-/etc/ferry/env");
        assert_eq!(
            setting(&text, "ExecStart"),
            "/usr/local/bin/ferry serve --data-dir /var/lib/ferry --api-addr 0.0.0.0:7070"
        );
        // upgrade finds the daemon through the data dir; no --api-addr.
        assert_eq!(
            setting(&text, "ExecReload"),
            "/usr/local/bin/ferry upgrade --data-dir /var/lib/ferry"
        );
        let ipv6 = UnitOptions {
            api_addr: Some("[::1]:7070".into()),
            ..options()
        };
        assert!(
            setting(&unit_text(&ipv6).unwrap(), "ExecStart").ends_with("--api-addr [::1]:7070")
        );
    }

    #[test]
    fn unit_quotes_paths_with_spaces_quotes_and_backslashes() {
        let o = UnitOptions {
            binary: "/opt/my apps/ferry".into(),
            data_dir: "/var/lib/a \"b\" c\\d".into(),
            config_dir: "/srv/my app".into(),
            environment_file: Some("/etc/my ferry/env".into()),
            ..options()
        };
        let text = unit_text(&o).unwrap();
        assert_eq!(
            setting(&text, "ExecStart"),
            r#""/opt/my apps/ferry" serve --data-dir "/var/lib/a \"b\" c\\d""#
        );
        assert_eq!(
            setting(&text, "ExecReload"),
            r#""/opt/my apps/ferry" upgrade --data-dir "/var/lib/a \"b\" c\\d""#
        );
        assert_eq!(
            setting(&text, "ReadWritePaths"),
            r#""-/var/lib/a \"b\" c\\d" "/srv/my app""#
        );
        // Not unquoted by systemd: written as they are.
        assert_eq!(setting(&text, "WorkingDirectory"), "/srv/my app");
        assert_eq!(setting(&text, "EnvironmentFile"), "-/etc/my ferry/env");
    }

    #[test]
    fn unit_quotes_single_quotes() {
        let o = UnitOptions {
            config_dir: "/srv/it's".into(),
            ..options()
        };
        let text = unit_text(&o).unwrap();
        assert_eq!(
            setting(&text, "ReadWritePaths"),
            r#"-/var/lib/ferry "/srv/it's""#
        );
        assert_eq!(setting(&text, "WorkingDirectory"), "/srv/it's");
    }

    #[test]
    fn unit_escapes_specifiers_everywhere_and_dollars_on_command_lines() {
        let o = UnitOptions {
            binary: "/opt/100%/ferry".into(),
            data_dir: "/var/lib/$HOME%n".into(),
            config_dir: "/srv/50%$".into(),
            environment_file: Some("/etc/%i/$env".into()),
            ..options()
        };
        let text = unit_text(&o).unwrap();
        assert_eq!(
            setting(&text, "ExecStart"),
            "/opt/100%%/ferry serve --data-dir /var/lib/$$HOME%%n"
        );
        assert_eq!(
            setting(&text, "ExecReload"),
            "/opt/100%%/ferry upgrade --data-dir /var/lib/$$HOME%%n"
        );
        assert_eq!(
            setting(&text, "ReadWritePaths"),
            "-/var/lib/$HOME%%n /srv/50%%$"
        );
        assert_eq!(setting(&text, "WorkingDirectory"), "/srv/50%%$");
        assert_eq!(setting(&text, "EnvironmentFile"), "-/etc/%%i/$env");
        // Quoting and escaping together.
        let both = UnitOptions {
            data_dir: "/var/lib/a b%$".into(),
            ..options()
        };
        let text = unit_text(&both).unwrap();
        assert!(setting(&text, "ExecStart").ends_with(r#"--data-dir "/var/lib/a b%%$$""#));
        assert!(setting(&text, "ReadWritePaths").starts_with(r#""-/var/lib/a b%%$" "#));
    }

    #[test]
    fn unit_keeps_unicode_as_it_is() {
        let o = UnitOptions {
            config_dir: "/srv/café".into(),
            ..options()
        };
        assert_eq!(
            setting(&unit_text(&o).unwrap(), "WorkingDirectory"),
            "/srv/café"
        );
    }

    fn refused(o: UnitOptions) -> String {
        match unit_text(&o) {
            Err(e @ InstallError::BadOption { .. }) => e.to_string(),
            other => panic!("expected BadOption, got {other:?}"),
        }
    }

    #[test]
    fn unit_refuses_newlines_and_control_characters_in_any_path() {
        type SetPath = fn(&mut UnitOptions, PathBuf);
        let cases: [(&str, SetPath); 4] = [
            ("binary", |o, p| o.binary = p),
            ("data dir", |o, p| o.data_dir = p),
            ("config dir", |o, p| o.config_dir = p),
            ("environment file", |o, p| o.environment_file = Some(p)),
        ];
        for (field, set) in cases {
            let mut o = options();
            set(&mut o, "/srv/a\nExecStartPre=/bin/evil".into());
            let e = refused(o);
            assert!(e.contains(field) && e.contains("newline"), "{e}");
            let mut o = options();
            set(&mut o, "/srv/a\tb".into());
            assert!(refused(o).contains("control character"));
            let mut o = options();
            set(&mut o, "/srv/a\rb".into());
            assert!(refused(o).contains("control character"));
        }
    }

    #[test]
    fn unit_refuses_relative_and_non_utf8_paths() {
        let e = refused(UnitOptions {
            data_dir: ".ferry".into(),
            ..options()
        });
        assert!(e.contains("data dir") && e.contains("relative"), "{e}");
        let e = refused(UnitOptions {
            binary: "ferry".into(),
            ..options()
        });
        assert!(e.contains("binary"), "{e}");
        use std::os::unix::ffi::OsStringExt;
        let e = refused(UnitOptions {
            config_dir: std::ffi::OsString::from_vec(b"/srv/\xff".to_vec()).into(),
            ..options()
        });
        assert!(e.contains("UTF-8"), "{e}");
        let e = refused(UnitOptions {
            environment_file: Some("/srv/app/../env".into()),
            ..options()
        });
        assert!(e.contains("environment file") && e.contains("`..`"), "{e}");
        // `.` and doubled slashes are fine: systemd simplifies them.
        let o = UnitOptions {
            config_dir: "/srv/./app//x".into(),
            ..options()
        };
        assert!(unit_text(&o).is_ok());
    }

    #[test]
    fn unit_refuses_what_verbatim_settings_would_mangle() {
        let e = refused(UnitOptions {
            config_dir: "/srv/app ".into(),
            ..options()
        });
        assert!(e.contains("ends with a space"), "{e}");
        let e = refused(UnitOptions {
            environment_file: Some("/etc/env\\".into()),
            ..options()
        });
        assert!(e.contains("backslash"), "{e}");
        // The same characters are fine where systemd unquotes.
        let o = UnitOptions {
            data_dir: "/var/lib/ferry \\".into(),
            ..options()
        };
        let text = unit_text(&o).unwrap();
        assert_eq!(
            setting(&text, "ReadWritePaths"),
            r#""-/var/lib/ferry \\" /srv/app"#
        );
    }

    #[test]
    fn unit_checks_user_and_api_address() {
        for good in ["ferry", "www-data", "svc_1", "a.b", "1000"] {
            let o = UnitOptions {
                user: Some(good.into()),
                ..options()
            };
            assert_eq!(setting(&unit_text(&o).unwrap(), "User"), good);
        }
        for bad in ["", "-x", "a b", "a\nb", "a%b", "root:root", "..", "é"] {
            let e = refused(UnitOptions {
                user: Some(bad.into()),
                ..options()
            });
            assert!(e.contains("user"), "{e}");
        }
        for bad in [
            "localhost:7070",
            "127.0.0.1",
            "127.0.0.1:7070 --x",
            "; rm",
            "1.2.3.4:70\n",
        ] {
            let e = refused(UnitOptions {
                api_addr: Some(bad.into()),
                ..options()
            });
            assert!(e.contains("API address"), "{e}");
        }
    }

    #[test]
    fn quoting_helpers() {
        assert_eq!(list_word("/plain/path"), "/plain/path");
        assert_eq!(list_word("/a b"), r#""/a b""#);
        assert_eq!(list_word(r#"/a"b"#), r#""/a\"b""#);
        assert_eq!(list_word(r"/a\b"), r#""/a\\b""#);
        assert_eq!(list_word("/a%b"), "/a%%b");
        assert_eq!(list_word("/a$b"), "/a$b");
        assert_eq!(exec_word("/a$b"), "/a$$b");
        assert_eq!(exec_word("/a ${B}"), r#""/a $${B}""#);
        assert_eq!(
            sh_word("/etc/systemd/system/ferry.service"),
            "/etc/systemd/system/ferry.service"
        );
        assert_eq!(sh_word("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(sh_word(""), "''");
    }

    /// systemd-analyze, where installed, reads the unit without complaint.
    #[test]
    fn systemd_analyze_accepts_the_unit_when_available() {
        let Ok(out) = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
        else {
            return;
        };
        if !out.status.success() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("my app");
        std::fs::create_dir(&config).unwrap();
        let o = UnitOptions {
            binary: "/bin/true".into(),
            data_dir: dir.path().join("data 100% $HOME \"q\" it's \\b"),
            config_dir: config,
            user: Some("root".into()),
            api_addr: Some("127.0.0.1:7070".into()),
            environment_file: Some(dir.path().join("env file")),
        };
        let unit = dir.path().join("ferry.service");
        std::fs::write(&unit, unit_text(&o).unwrap()).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Lines about ferry.service itself; the host's other units may warn.
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("ferry.service"))
            .collect();
        assert!(ours.is_empty(), "systemd-analyze verify:\n{stderr}");
    }

    // --- install -------------------------------------------------------------

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn install_writes_0644_and_says_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.service");
        let message = install(&options(), &path, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            unit_text(&options()).unwrap()
        );
        assert_eq!(mode(&path), 0o644);
        assert!(
            message.starts_with(&format!("wrote {}\n", path.display())),
            "{message}"
        );
        for command in [
            "systemctl daemon-reload",
            "systemctl enable --now ferry\n",
            "journalctl -u ferry -f",
            "`systemctl reload ferry` upgrades",
        ] {
            assert!(message.contains(command), "{command} in:\n{message}");
        }
        // Not in a unit directory: say where it has to go.
        assert!(message.contains("cp "), "{message}");
        // Only the unit is left in the directory (no temporary file).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn install_leaves_an_identical_file_and_refuses_a_different_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.service");
        install(&options(), &path, false).unwrap();
        let again = install(&options(), &path, false).unwrap();
        assert!(again.contains("already up to date"), "{again}");

        std::fs::write(&path, "[Service]\nExecStart=/bin/mine\n").unwrap();
        let e = install(&options(), &path, false).unwrap_err();
        assert!(matches!(e, InstallError::Exists { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("--force"),
            "{message}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[Service]\nExecStart=/bin/mine\n"
        );

        install(&options(), &path, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            unit_text(&options()).unwrap()
        );
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn install_names_the_unit_after_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry-prod.service");
        let message = install(&options(), &path, false).unwrap();
        assert!(
            message.contains("systemctl enable --now ferry-prod\n"),
            "{message}"
        );
        assert!(message.contains("journalctl -u ferry-prod -f"), "{message}");
        assert!(
            message.contains("/etc/systemd/system/ferry-prod.service"),
            "{message}"
        );
        for bad in ["ferry.unit", ".service", "ferry"] {
            let e = install(&options(), &dir.path().join(bad), false).unwrap_err();
            assert!(
                matches!(e, InstallError::NotAServiceName { .. }),
                "{bad}: {e:?}"
            );
            assert!(e.to_string().contains(".service"));
        }
    }

    #[test]
    fn install_says_to_create_the_data_dir_for_a_user() {
        let dir = tempfile::tempdir().unwrap();
        let o = UnitOptions {
            user: Some("ferry".into()),
            data_dir: dir.path().join("data"),
            ..options()
        };
        let message = install(&o, &dir.path().join("ferry.service"), false).unwrap();
        assert!(
            message.contains("install -d -m 0700 -o ferry "),
            "{message}"
        );
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let message = install(&o, &dir.path().join("ferry.service"), false).unwrap();
        assert!(!message.contains("install -d"), "{message}");
    }

    #[test]
    fn install_errors_name_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("ferry.service");
        let e = install(&options(), &path, false).unwrap_err();
        assert!(matches!(e, InstallError::NoDirectory { .. }), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()));
        assert!(e.to_string().contains("--unit-file"));

        let bad = UnitOptions {
            data_dir: "relative".into(),
            ..options()
        };
        let e = install(&bad, &dir.path().join("ferry.service"), false).unwrap_err();
        assert!(matches!(e, InstallError::BadOption { .. }), "{e:?}");
        assert!(!dir.path().join("ferry.service").exists());

        // A directory the process may not write to (skipped as root, who may).
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        if tempfile::tempfile_in(&locked).is_err() {
            let path = locked.join("ferry.service");
            let e = install(&options(), &path, false).unwrap_err();
            assert!(matches!(e, InstallError::PermissionDenied { .. }), "{e:?}");
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(
                message.contains("run as root") && message.contains("--unit-file"),
                "{message}"
            );
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn permission_errors_map_to_the_root_hint() {
        let path = Path::new("/etc/systemd/system/ferry.service");
        for kind in [
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::ReadOnlyFilesystem,
        ] {
            let e = write_error(path, io::Error::from(kind));
            assert!(
                matches!(e, InstallError::PermissionDenied { .. }),
                "{kind:?}"
            );
            assert!(e.to_string().contains("run as root"));
        }
        let e = write_error(path, io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(e, InstallError::Io { .. }));
        assert!(
            e.to_string()
                .starts_with("cannot write /etc/systemd/system/ferry.service")
        );
    }

    #[test]
    fn install_message_in_a_unit_directory_needs_no_copy() {
        let message = install_message(&options(), Path::new(DEFAULT_UNIT_PATH), "ferry", false);
        assert_eq!(
            message,
            "wrote /etc/systemd/system/ferry.service\n\
             next:\n  \
             systemctl daemon-reload\n  \
             systemctl enable --now ferry\n  \
             journalctl -u ferry -f    # follow its logs\n\
             later, `systemctl reload ferry` upgrades Ferry in place to the binary now on disk (it runs `ferry upgrade`)"
        );
    }
}
