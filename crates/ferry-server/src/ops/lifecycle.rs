//! The daemon's own lifecycle: `ferry upgrade` (the data plane is handed
//! over to the new binary, then the control plane re-executes it) and
//! `ferry shutdown` (everything stops).

use super::{Actor, Audit, OpError, OpResult};
use crate::Exit;
use crate::daemon::Daemon;
use ferry_api::{LifecycleAccepted, UpgradeRequest};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Hand the data plane over to `binary` (default: the one the daemon was
/// started from, as it is on disk now), then end `serve` so that the
/// control plane re-executes it. Nothing is changed when the binary does
/// not run or its data plane does not serve: the old processes keep
/// serving and the error says why.
pub async fn upgrade(
    d: &Arc<Daemon>,
    req: UpgradeRequest,
    actor: &Actor,
) -> OpResult<LifecycleAccepted> {
    let audit = Audit::new(
        d,
        actor,
        "upgrade",
        "daemon",
        serde_json::json!({ "binary": req.binary }),
    );
    let binary = match (&req.binary, d.binary()) {
        (Some(b), _) => PathBuf::from(b),
        (None, Some(b)) => b,
        (None, None) => {
            return audit.reject(OpError::Conflict(
                "the proxies run inside the daemon (--data-plane inline), so an upgrade cannot keep serving; restart `ferry serve` without --data-plane inline first".into(),
            ));
        }
    };
    // The new control plane reads the config file again; one it would
    // refuse must not replace this one.
    if let Some(Err(errors)) = d.alerting.get().map(|a| a.check_reload()) {
        return audit.reject(OpError::Conflict(format!(
            "the config file has errors, so a new control plane would not start; fix them first:\n{}",
            errors.join("\n")
        )));
    }
    if !binary.is_absolute() {
        return audit.reject(OpError::BadRequest(format!(
            "binary: {} is not an absolute path",
            binary.display()
        )));
    }
    {
        let core = d.core.lock().await;
        if let Some(id) = core.hooks_running().next() {
            return audit.reject(OpError::Conflict(format!(
                "the pre_deploy hook of rollout {id} is running; upgrade once it has finished (an upgrade would leave its outcome unknown)"
            )));
        }
    }
    let version = match version_of(&binary).await {
        Ok(v) => v,
        Err(e) => {
            return audit.reject(OpError::Failed(format!(
                "{} does not run: {e}; nothing was changed",
                binary.display()
            )));
        }
    };
    let dataplane = d.core.lock().await.dataplane.clone();
    match dataplane.replace(binary.clone()).await {
        Ok(text) => {
            tracing::info!("upgrade to {version}: {text}");
            audit.record(&format!(
                "ok: {text}; the control plane re-executes {}",
                binary.display()
            ));
            d.request_exit(Exit::Upgrade(binary));
            Ok(LifecycleAccepted {
                message: format!("{text}; the control plane now re-executes as {version}"),
                version: Some(version),
            })
        }
        Err(e) => audit.reject(OpError::Failed(format!("upgrade failed: {e}"))),
    }
}

/// Stop everything: the proxies stop accepting, requests in flight
/// finish, instances drain and stop, then the daemon exits.
pub fn shutdown(d: &Daemon, actor: &Actor) -> OpResult<LifecycleAccepted> {
    let audit = Audit::new(d, actor, "shutdown", "daemon", serde_json::Value::Null);
    audit.record("ok");
    d.request_exit(Exit::Shutdown);
    Ok(LifecycleAccepted {
        message: "shutting down: the proxies stop accepting, requests in flight finish, instances drain and stop, then the daemon exits".into(),
        version: None,
    })
}

/// What `<binary> --version` says, e.g. `0.1.0`: proof that it runs.
async fn version_of(binary: &std::path::Path) -> Result<String, String> {
    let run = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "`--version` did not answer within 10s".to_string())?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "`--version` failed ({})",
            ferry_runtime::describe_exit(out.status)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("ferry ")
        .map(str::to_string)
        .ok_or_else(|| format!("it is not ferry (`--version` said {:?})", text.trim()))
}
