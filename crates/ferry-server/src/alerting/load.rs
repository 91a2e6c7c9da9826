//! Reading `[alerting]`: the rule files (built-in and the user's), the
//! routing config (Alertmanager's YAML or ferry.toml's tables) and the
//! receivers, all checked before anything is used, so that a start or a
//! reload applies all of it or none.

use ferry_alert::duration::PromDuration;
use ferry_alert::rulefmt::{self, GroupSpec};
use ferry_core::alerting_config::AlertingConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The built-in rule file (seed 001's thresholds and severities).
pub const BUILTIN: &str = include_str!("builtin.yml");
/// How the built-in file is named in `/api/v1/rules` and errors.
pub const BUILTIN_NAME: &str = "built-in";

/// One rule group to run, and the file it came from.
#[derive(Debug, Clone)]
pub struct GroupDef {
    pub file: String,
    pub spec: GroupSpec,
}

/// Everything `[alerting]` says, read and checked.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub groups: Vec<GroupDef>,
    pub am: ferry_alert::config::AlertmanagerConfig,
    /// Where `am` came from (a file, or "ferry.toml", or "built-in").
    pub am_source: String,
    pub eval_interval: PromDuration,
    pub resend_delay: PromDuration,
    pub external_url: Option<String>,
    pub external_labels: ferry_alert::alert::LabelSet,
    pub alertmanagers: Vec<String>,
    /// Not errors, but worth a line in the log (a glob matching nothing).
    pub warnings: Vec<String>,
    /// `am` compiled for the dispatcher.
    pub compiled: ferry_alert::config::Compiled,
    /// `am`'s receivers, ready to send (their `*_file` secrets read).
    pub integrations: Arc<Integrations>,
}

/// Each receiver's integrations, by receiver name.
pub type Integrations = std::collections::BTreeMap<String, Vec<super::receivers::Integration>>;

/// Files matching `pattern`: wildcards (`*`, `?`) in the last path
/// component only, e.g. `rules/*.yml`; sorted.
pub fn glob(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let name = pattern
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a file pattern", pattern.display()))?;
    let dir = pattern.parent().unwrap_or(Path::new("."));
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(format!(
            "{}: wildcards are allowed in the file name only (e.g. rules/*.yml)",
            pattern.display()
        ));
    }
    if !name.contains(['*', '?']) {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let entries = match std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) {
        Ok(e) => e,
        // As Prometheus's glob: a directory that does not exist (yet)
        // matches nothing, which the caller warns about.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard(name, n)))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Read and check everything `[alerting]` names; `base` is the config
/// file's directory (relative paths are relative to it). Every problem
/// is returned, each naming its file (and line, when known).
pub fn load(
    cfg: &AlertingConfig,
    base: &Path,
    config_file: Option<&Path>,
) -> Result<Loaded, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut user: Vec<GroupDef> = Vec::new();
    for pattern in &cfg.rule_files {
        let full = base.join(pattern);
        let files = match glob(&full) {
            Ok(f) => f,
            Err(e) => {
                errors.push(format!("[alerting] rule_files: {e}"));
                continue;
            }
        };
        if files.is_empty() {
            warnings.push(format!(
                "[alerting] rule_files: {pattern:?} matches no file in {}",
                base.display()
            ));
        }
        for file in files {
            match rulefmt::load(&file) {
                Ok(f) => {
                    warnings.extend(f.warnings.iter().map(|w| w.to_string()));
                    user.extend(f.groups.into_iter().map(|spec| GroupDef {
                        file: file.display().to_string(),
                        spec,
                    }));
                }
                Err(errs) => errors.extend(errs.iter().map(|e| e.to_string())),
            }
        }
    }
    let mut groups: Vec<GroupDef> = Vec::new();
    if cfg.builtin_rules {
        match rulefmt::parse(BUILTIN_NAME, BUILTIN) {
            Ok(f) => {
                // A user rule of the same name replaces the built-in one.
                let mine: std::collections::BTreeSet<&str> = user
                    .iter()
                    .flat_map(|g| g.spec.rules.iter().map(|r| r.name()))
                    .collect();
                for mut spec in f.groups {
                    spec.rules.retain(|r| !mine.contains(r.name()));
                    groups.push(GroupDef {
                        file: BUILTIN_NAME.to_string(),
                        spec,
                    });
                }
            }
            Err(errs) => errors.extend(errs.iter().map(|e| e.to_string())),
        }
    }
    groups.extend(user);
    for name in &cfg.disable_rules {
        let mut found = false;
        for g in &mut groups {
            let before = g.spec.rules.len();
            g.spec.rules.retain(|r| r.name() != name);
            found |= g.spec.rules.len() != before;
        }
        if !found {
            errors.push(format!(
                "[alerting] disable_rules: no rule named {name:?} is loaded; `ferry alerts rules` lists them"
            ));
        }
    }
    groups.retain(|g| !g.spec.rules.is_empty());
    // The text the routing config came from, to put a line on its errors.
    let mut am_text: Option<String> = None;
    let (am, am_source) = match &cfg.alertmanager_config {
        Some(path) => {
            let full = base.join(path);
            match std::fs::read_to_string(&full) {
                Ok(text) => match ferry_alert::config::AlertmanagerConfig::from_yaml(
                    &full.display().to_string(),
                    &text,
                ) {
                    Ok(c) => {
                        am_text = Some(text);
                        (c, full.display().to_string())
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        (Default::default(), String::new())
                    }
                },
                Err(e) => {
                    errors.push(format!(
                        "[alerting] alertmanager_config: cannot read {}: {e}",
                        full.display()
                    ));
                    (Default::default(), String::new())
                }
            }
        }
        None => {
            let mut c = cfg.inline_alertmanager();
            let source = match (c.route.is_some(), config_file) {
                (true, Some(f)) => {
                    am_text = std::fs::read_to_string(f).ok();
                    f.display().to_string()
                }
                (true, None) => "ferry.toml".to_string(),
                (false, _) => "built-in".to_string(),
            };
            if c.route.is_none() {
                c.route = Some(ferry_alert::config::ferry_default_route());
                for name in ferry_alert::config::FERRY_DEFAULT_RECEIVERS {
                    if !c.receivers.iter().any(|r| r.name == *name) {
                        c.receivers.push(ferry_alert::config::ReceiverConfig {
                            name: name.to_string(),
                            ..Default::default()
                        });
                    }
                }
            }
            (c, source)
        }
    };
    let at = |e: &dyn std::fmt::Display| located(&am_source, am_text.as_deref(), &e.to_string());
    let mut built = None;
    if errors.is_empty() {
        match am.validate() {
            Ok(notes) => warnings.extend(notes.into_iter().map(|w| format!("{am_source}: {w}"))),
            Err(e) => errors.push(at(&e)),
        }
        let compiled = match errors.is_empty().then(|| am.compile()) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                errors.push(at(&e));
                None
            }
            None => None,
        };
        let integrations = match super::receivers::build_receivers(&am.receivers, &am.global) {
            Ok(i) => Some(i),
            Err(e) => {
                errors.push(at(&e));
                None
            }
        };
        built = compiled.zip(integrations);
    }
    let Some((compiled, integrations)) = built.filter(|_| errors.is_empty()) else {
        return Err(errors);
    };
    Ok(Loaded {
        compiled,
        integrations: Arc::new(integrations),
        groups,
        am,
        am_source,
        eval_interval: PromDuration(cfg.evaluation_interval.as_millis() as i64),
        resend_delay: PromDuration(cfg.resend_delay.as_millis() as i64),
        external_url: cfg.external_url.clone(),
        external_labels: cfg.external_labels.clone(),
        alertmanagers: cfg.alertmanagers.clone(),
        warnings,
    })
}

/// `source:LINE: message` for an error found after parsing (an unknown
/// receiver, a name used twice, a missing field): the line is where the
/// value the message quotes first stands in `text` (where it stands last,
/// for a name that is not unique), when it is found.
fn located(source: &str, text: Option<&str>, message: &str) -> String {
    let quoted = message
        .split('"')
        .nth(1)
        .filter(|q| !q.is_empty() && !q.contains('\n'));
    let line = text.zip(quoted).and_then(|(text, q)| {
        let mut hits = text.lines().enumerate().filter(|(_, l)| {
            let code = l.split('#').next().unwrap_or("");
            code.match_indices(q).any(|(i, _)| {
                let before = code[..i].chars().next_back();
                let after = code[i + q.len()..].chars().next();
                let word = |c: Option<char>| {
                    c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-')
                };
                !word(before) && !word(after)
            })
        });
        if message.contains("not unique") {
            hits.last()
        } else {
            hits.next()
        }
        .map(|(i, _)| i + 1)
    });
    match line {
        Some(n) => format!("{source}:{n}: {message}"),
        None => format!("{source}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_found_after_parsing_get_the_line_of_what_they_quote() {
        let text =
            "route:\n  receiver: team # not team-b\nreceivers:\n  - name: team\n  - name: team\n";
        assert_eq!(
            located(
                "am.yml",
                Some(text),
                r#"route: undefined receiver "team" used in route"#
            ),
            r#"am.yml:2: route: undefined receiver "team" used in route"#
        );
        assert_eq!(
            located(
                "am.yml",
                Some(text),
                r#"notification config name "team" is not unique"#
            ),
            r#"am.yml:5: notification config name "team" is not unique"#
        );
        // Not found, or nothing quoted: no line rather than a wrong one.
        assert_eq!(
            located("am.yml", Some(text), r#"x "nobody" y"#),
            r#"am.yml: x "nobody" y"#
        );
        assert_eq!(located("am.yml", None, "plain"), "am.yml: plain");
    }

    #[test]
    fn wildcards_in_the_file_name() {
        assert!(wildcard("*.yml", "a.yml"));
        assert!(wildcard("a?c*.y*ml", "abcd.yaml"));
        assert!(!wildcard("*.yml", "a.yaml"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("a", ""));
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.yml", "a.yml", "c.txt"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let got = glob(&dir.path().join("*.yml")).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.yml", "b.yml"]);
        assert!(glob(&dir.path().join("*/x.yml")).is_err());
        assert!(glob(&dir.path().join("missing/*.yml")).unwrap().is_empty());
    }

    #[test]
    fn the_builtin_rules_load() {
        let f = rulefmt::parse(BUILTIN_NAME, BUILTIN).unwrap();
        let names: Vec<&str> = f
            .groups
            .iter()
            .flat_map(|g| g.rules.iter().map(|r| r.name()))
            .collect();
        assert!(names.contains(&"HostCpuWarning") && names.contains(&"ServiceDown"));
        for g in &f.groups {
            for r in &g.rules {
                let sev = r.labels.get("severity").map(String::as_str);
                assert!(
                    matches!(sev, Some("info" | "warning" | "critical" | "emergency")),
                    "{}: {sev:?}",
                    r.name()
                );
            }
        }
    }

    fn names(l: &Loaded) -> Vec<String> {
        l.groups
            .iter()
            .flat_map(|g| g.spec.rules.iter().map(|r| r.name().to_string()))
            .collect()
    }

    #[test]
    fn builtin_rules_are_replaced_or_disabled_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.yml"),
            "groups:\n  - name: mine\n    rules:\n      - alert: HostCpuWarning\n        expr: vector(1) > 2\n        labels: {severity: warning}\n",
        )
        .unwrap();
        let cfg = AlertingConfig {
            rule_files: vec!["*.yml".into()],
            disable_rules: vec!["TargetDown".into()],
            ..Default::default()
        };
        let l = load(&cfg, dir.path(), None).unwrap();
        let n = names(&l);
        assert_eq!(
            n.iter().filter(|x| *x == "HostCpuWarning").count(),
            1,
            "{n:?}"
        );
        let mine = l.groups.iter().find(|g| g.spec.name == "mine").unwrap();
        assert_eq!(mine.spec.rules[0].expr, "vector(1) > 2");
        assert!(!n.contains(&"TargetDown".to_string()), "{n:?}");
        assert!(n.contains(&"HostCpuCritical".to_string()), "{n:?}");
        // The default routing: the guide's four receivers.
        assert_eq!(l.am_source, "built-in");
        assert!(l.am.receivers.iter().any(|r| r.name == "pagerduty"));

        let typo = AlertingConfig {
            disable_rules: vec!["HostCpuWarnin".into()],
            ..Default::default()
        };
        let errs = load(&typo, dir.path(), None).unwrap_err();
        assert!(
            errs[0].contains("no rule named \"HostCpuWarnin\""),
            "{errs:?}"
        );
        let none = AlertingConfig {
            builtin_rules: false,
            ..Default::default()
        };
        assert!(load(&none, dir.path(), None).unwrap().groups.is_empty());
    }

    #[test]
    fn an_alertmanager_yml_is_used_as_it_is_and_its_errors_have_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("alertmanager.yml"),
            "route:\n  receiver: team\n  routes:\n    - matchers: ['severity=\"critical\"']\n      receiver: pager\nreceivers:\n  - name: team\n    webhook_configs: [{url: 'http://127.0.0.1:1/x'}]\n  - name: pager\n",
        )
        .unwrap();
        let cfg = AlertingConfig {
            alertmanager_config: Some("alertmanager.yml".into()),
            ..Default::default()
        };
        let l = load(&cfg, dir.path(), None).unwrap();
        assert!(l.am_source.ends_with("alertmanager.yml"));
        assert_eq!(l.am.receivers.len(), 2);
        std::fs::write(
            dir.path().join("alertmanager.yml"),
            "route:\n  receiver: team\n  group_wait: soon\nreceivers:\n  - name: team\n",
        )
        .unwrap();
        let errs = load(&cfg, dir.path(), None).unwrap_err();
        assert!(errs[0].contains("alertmanager.yml:3:"), "{errs:?}");
        std::fs::write(
            dir.path().join("alertmanager.yml"),
            "route:\n  receiver: nobody\nreceivers:\n  - name: team\n",
        )
        .unwrap();
        let errs = load(&cfg, dir.path(), None).unwrap_err();
        assert!(errs[0].contains("alertmanager.yml:2: "), "{errs:?}");
        assert!(errs[0].contains("nobody"), "{errs:?}");
    }
}
