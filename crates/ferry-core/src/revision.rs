//! Revisions: immutable, numbered snapshots of a service's spec plus the
//! version and overrides of one deploy.

use crate::Millis;
use crate::spec::{ServiceSpec, fill_placeholders};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revision {
    pub service: String,
    pub number: u64,
    pub version: String,
    /// The spec as the config file said at deploy time.
    pub spec: ServiceSpec,
    /// `--set KEY=VALUE` environment overrides.
    pub overrides: BTreeMap<String, String>,
    /// Absolute directory of the config file: relative paths resolve here.
    pub base_dir: String,
    pub config_file: String,
    pub message: Option<String>,
    pub author: String,
    pub created_at: Millis,
    /// The validation suites its gates run (copied from `[validation]`
    /// when it was deployed, so a later edit never changes a release).
    #[serde(default, skip_serializing_if = "is_default_validation")]
    pub validation: crate::validation::ValidationConfig,
    /// When the change was committed (`--commit-time`, or git's commit
    /// time when the version is a commit), for lead time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<Millis>,
}

fn is_default_validation(v: &crate::validation::ValidationConfig) -> bool {
    *v == crate::validation::ValidationConfig::default()
}

impl Revision {
    /// The environment of an instance on `port`: the spec's env, then the
    /// overrides, placeholders filled, plus what Ferry itself sets.
    pub fn env(&self, port: u16) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self
            .spec
            .env
            .iter()
            .chain(self.overrides.iter())
            .map(|(k, v)| (k.clone(), fill_placeholders(v, port, &self.version)))
            .collect();
        env.insert("PORT".into(), port.to_string());
        env.insert("FERRY_SERVICE".into(), self.service.clone());
        env.insert("FERRY_REVISION".into(), self.number.to_string());
        env.insert("FERRY_VERSION".into(), self.version.clone());
        env
    }

    /// The argument list of an instance on `port`.
    pub fn argv(&self, port: u16) -> Vec<String> {
        self.spec
            .command
            .argv(|a| fill_placeholders(a, port, &self.version))
    }

    /// Where instances and hooks run.
    pub fn workdir(&self) -> PathBuf {
        let base = PathBuf::from(&self.base_dir);
        match &self.spec.workdir {
            Some(w) => base.join(fill_placeholders(w, 0, &self.version)),
            None => base,
        }
    }
}

/// Validate a version label given on the command line. It is filled into
/// paths (`releases/{version}`) and argument lists, so it must be one plain
/// path component that no program reads as an option: it starts with a
/// letter or digit (never `.`, `..` or `-`).
pub fn check_version(version: &str) -> Result<(), String> {
    if version.is_empty() || version.len() > 128 {
        return Err("--version must be 1 to 128 characters".into());
    }
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
    {
        return Err(format!(
            "--version `{version}` may use only letters, digits, `.`, `-`, `_` and `+` (it is filled into paths and commands)"
        ));
    }
    if !version.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "--version `{version}` must start with a letter or digit: it is filled into paths, where `.` and `..` name other directories, and into argument lists, where a leading `-` reads as an option"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_version;

    #[test]
    fn versions_cannot_escape_a_path_or_become_an_option() {
        for good in ["v1", "1.2.3", "2026-11-25", "v1+build.7", "a..b"] {
            assert!(check_version(good).is_ok(), "{good}");
        }
        for bad in [
            "", ".", "..", ".hidden", "-rf", "--help", "_x", "+1", "a/b", "v 1", "v\n",
        ] {
            assert!(check_version(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(
            check_version("..")
                .unwrap_err()
                .contains("start with a letter or digit")
        );
    }
}
