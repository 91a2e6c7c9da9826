use super::*;
use std::path::PathBuf;

fn conformance_dir() -> PathBuf {
    // Prometheus's cases, copied from shared/promql-tests/rulefmt.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/rulefmt");
    assert!(
        dir.is_dir(),
        "the rulefmt conformance files are missing: {}",
        dir.display()
    );
    dir
}

/// Prometheus's rulefmt_test.go runs the `legacy_validation_*` files
/// under the legacy name scheme and every other one under UTF-8.
fn opts_for(name: &str) -> ParseOptions {
    ParseOptions {
        name_validation: if name.starts_with("legacy_validation") {
            NameValidation::Legacy
        } else {
            NameValidation::Utf8
        },
        ..ParseOptions::default()
    }
}

#[test]
fn conformance_good_files_load() {
    let dir = conformance_dir();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".good.yaml") || name == "test.yaml" || name == "test_aliases.yaml" {
            let f = load_with(&p, opts_for(&name)).unwrap_or_else(|e| panic!("{name}: {}", e[0]));
            assert!(!f.groups.is_empty(), "{name}");
            n += 1;
        }
    }
    assert_eq!(n, 5, "good files found");
}

#[test]
fn conformance_bad_files_are_rejected_at_the_right_line() {
    let dir = conformance_dir();
    let expect: &[(&str, &str, u32)] = &[
        ("bad_expr.bad.yaml", "parse error", 5),
        ("bad_field.bad.yaml", "field annotation not found", 8),
        (
            "duplicate_grp.bad.yaml",
            "groupname: \"yolo\" is repeated in the same file",
            3,
        ),
        ("invalid_label_name.bad.yaml", "invalid label name", 7),
        (
            "invalid_record_name.bad.yaml",
            "braces present in the recording rule name; should it be in expr?: strawberry{flavor=\"sweet\"}",
            4,
        ),
        (
            "legacy_validation_annotation.bad.yaml",
            "invalid annotation name: ins-tance",
            7,
        ),
        (
            "no_rec_alert.bad.yaml",
            "one of 'record' or 'alert' must be set",
            4,
        ),
        ("noexpr.bad.yaml", "field 'expr' must be set in rule", 4),
        (
            "record_and_alert.bad.yaml",
            "only one of 'record' and 'alert' must be set",
            4,
        ),
        (
            "record_and_for.bad.yaml",
            "invalid field 'for' in recording rule",
            4,
        ),
        (
            "record_and_keep_firing_for.bad.yaml",
            "invalid field 'keep_firing_for' in recording rule",
            4,
        ),
    ];
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".bad.yaml") {
            continue;
        }
        let (_, msg, line) = expect
            .iter()
            .find(|(f, _, _)| *f == name)
            .unwrap_or_else(|| panic!("no expectation for the new bad file {name}"));
        let errs = load_with(&p, opts_for(&name)).expect_err(&name);
        let first = &errs[0];
        assert!(
            first.message.contains(msg),
            "{name}: {first} does not say {msg:?}"
        );
        assert_eq!(first.line, *line, "{name}: {first}");
        assert!(first.column > 0, "{name}: {first}");
        let shown = first.to_string();
        assert!(
            shown.starts_with(&format!("{}:{line}:", p.display())),
            "{shown}"
        );
        seen += 1;
    }
    assert_eq!(seen, expect.len());
}

#[test]
fn same_files_under_the_other_scheme() {
    // UTF-8 (the default) accepts the annotation name legacy rejects.
    let dir = conformance_dir();
    load(&dir.join("legacy_validation_annotation.bad.yaml")).unwrap();
    load(&dir.join("utf-8_annotation.good.yaml")).unwrap();
    let legacy = ParseOptions {
        name_validation: NameValidation::Legacy,
        ..Default::default()
    };
    let e = load_with(&dir.join("utf-8_lname.good.yaml"), legacy).unwrap_err();
    assert!(
        e[0].message.contains("invalid label name: ins-tance"),
        "{}",
        e[0]
    );
}

#[test]
fn aliases_and_merge_keys_resolve() {
    let f = load(&conformance_dir().join("test_aliases.yaml")).unwrap();
    let expr = "sum without(instance) (rate(errors_total[5m]))\n/\nsum without(instance) (rate(requests_total[5m]))\n";
    for g in &f.groups {
        assert_eq!(g.rules[0].kind, RuleKind::Alert("HighAlert".into()));
        assert_eq!(g.rules[0].labels["severity"], "critical");
        assert_eq!(
            g.rules[0].annotations["description"],
            "stuff's happening with {{ $.labels.service }}"
        );
        assert_eq!(g.rules[1].kind, RuleKind::Record("new_metric".into()));
        assert_eq!(g.rules[2].kind, RuleKind::Alert("HighAlert".into()));
        assert_eq!(g.rules[3].kind, RuleKind::Alert("HighAlert2".into()));
        assert_eq!(g.rules[3].labels["severity"], "critical");
        for r in &g.rules {
            assert_eq!(r.expr, expr);
        }
    }
}

#[test]
fn test_yaml_fields() {
    let f = load(&conformance_dir().join("test.yaml")).unwrap();
    assert_eq!(f.groups.len(), 2);
    let g = &f.groups[0];
    assert_eq!(g.name, "my-group-name");
    assert_eq!(g.interval, Some(PromDuration::from_secs(30)));
    assert_eq!(g.line, 2);
    assert_eq!(g.rules.len(), 3);
    assert_eq!(g.rules[0].for_, PromDuration::from_secs(300));
    assert_eq!(g.rules[0].line, 5);
    assert_eq!(g.rules[1].line, 17);
    assert_eq!(g.rules[1].labels.len(), 2);
}

#[test]
fn seed_production_alerts_load() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/seed003_production_alerts.yml");
    let f = load(&p).unwrap_or_else(|e| panic!("{}", e[0]));
    assert_eq!(f.groups.len(), 1);
    let g = &f.groups[0];
    assert_eq!(g.name, "production_alerts");
    assert_eq!(g.rules.len(), 7);
    assert!(g.rules.iter().all(RuleSpec::is_alert));
    assert_eq!(g.rules[0].name(), "HighErrorRate");
    assert_eq!(g.rules[0].for_, PromDuration::from_secs(120));
    assert_eq!(g.rules[0].labels["team"], "oncall");
    assert!(duplicate_rules(&f).is_empty());
    let rep = check(&[&p], false);
    assert_eq!(rep.exit_code, 0, "{rep:?}");
    assert!(rep.stdout.contains("  SUCCESS: 7 rules found\n"), "{rep:?}");
}

fn errs(text: &str) -> Vec<String> {
    match parse("r.yml", text) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_unknown_field_is_reported_at_its_line() {
    let e = errs(
        "groups:\n- name: a\n  intervall: 1m\n  rules:\n  - alert: x\n    expr: up\n    fro: 1m\nextra: 1\n",
    );
    assert_eq!(
        e,
        vec![
            "r.yml:8:1: field extra not found in type rulefmt.RuleGroups",
            "r.yml:3:3: field intervall not found in type rulefmt.RuleGroup",
            "r.yml:7:5: field fro not found in type rulefmt.Rule",
        ]
    );
    let lenient = ParseOptions {
        ignore_unknown_fields: true,
        ..Default::default()
    };
    assert!(
        parse_with(
            "r.yml",
            "groups:\n- name: a\n  foo: 1\n  rules: []\n",
            lenient
        )
        .is_ok()
    );
}

#[test]
fn semantic_errors_name_group_rule_and_position() {
    let e = errs(
        "groups:\n- name: g\n  labels:\n    __name__: x\n  rules:\n  - record: r\n    expr: up\n    annotations:\n      a: b\n  - alert: A\n    expr: sum(\n  - alert: B\n    expr: up\n    labels:\n      \"\": v\n",
    );
    assert_eq!(
        e,
        vec![
            "r.yml:4:5: group \"g\": invalid label name: __name__",
            "r.yml:6:13: group \"g\", rule 1, \"r\": invalid field 'annotations' in recording rule",
            // The parser's message follows "parse error: ".
            e[2].as_str(),
            "r.yml:15:7: group \"g\", rule 3, \"B\": invalid label name: ",
        ]
    );
    assert!(
        e[2].starts_with(
            "r.yml:11:11: group \"g\", rule 2, \"A\": could not parse expression: parse error: "
        ),
        "{}",
        e[2]
    );
}

#[test]
fn empty_group_name_durations_limit_and_yaml_errors() {
    assert_eq!(
        errs("groups:\n- name: \"\"\n  rules: []\n"),
        vec!["r.yml:2:9: Groupname must not be empty"]
    );
    let e = errs("groups:\n- name: a\n  interval: 5\n  rules: []\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("r.yml:3:13: not a valid duration string"),
        "{e:?}"
    );
    let e = errs("groups:\n- name: a\n  rules:\n  - alert: x\n    expr: up\n    for: soon\n");
    assert!(e[0].starts_with("r.yml:6:10: "), "{e:?}");
    let e = errs("groups: [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("r.yml:1:"), "{e:?}");
    let e = errs("groups:\n- name: a\n  rules:\n  - alert: x\n    alert: y\n");
    assert!(e[0].starts_with("r.yml:5:5: "), "{e:?}");
    assert!(e[0].contains("duplicate"), "{e:?}");

    let f = parse(
        "r.yml",
        "groups:\n- name: a\n  limit: 3\n  query_offset: 1m\n  interval: 0s\n  labels: {team: web}\n  rules: []\n",
    )
    .unwrap();
    let g = &f.groups[0];
    assert_eq!(
        (g.limit, g.query_offset, g.interval),
        (3, Some(PromDuration::from_secs(60)), None)
    );
    assert_eq!(g.labels["team"], "web");
}

#[test]
fn empty_input_and_multiple_documents() {
    assert!(parse("r.yml", "").unwrap().groups.is_empty());
    let f = parse(
        "r.yml",
        "groups:\n- name: a\n  rules: []\n---\ngroups:\n- name: b\n  rules: []\n",
    )
    .unwrap();
    assert_eq!(f.groups.len(), 1);
    assert_eq!(f.warnings.len(), 1);
    assert!(f.warnings[0].message.contains("only the first document"));
    let f = parse("r.yml", "groups:\n- name: a\n").unwrap();
    assert!(f.warnings.is_empty());
}

#[test]
fn scalar_values_keep_their_text() {
    let f = parse(
        "r.yml",
        "groups:\n- name: a\n  rules:\n  - record: r\n    expr: 1\n    labels: {v: 1.10, on: true}\n",
    )
    .unwrap();
    let r = &f.groups[0].rules[0];
    assert_eq!(r.expr, "1");
    assert_eq!(r.labels["v"], "1.10");
    assert_eq!(r.labels["on"], "true");
}

#[test]
fn promtool_check_output() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        "groups:\n- name: a\n  rules:\n  - record: r\n    expr: up\n  - alert: A\n    expr: up == 0\n",
    )
    .unwrap();
    let rep = check(&[&good], false);
    assert_eq!(
        rep.stdout,
        format!("Checking {}\n  SUCCESS: 2 rules found\n\n", good.display())
    );
    assert_eq!(rep.exit_code, 0);

    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "groups:\n- name: a\n  rules:\n  - record: r\n").unwrap();
    let rep = check(&[&good, &bad], false);
    assert_eq!(rep.exit_code, 1);
    assert!(
        rep.stdout
            .ends_with(&format!("Checking {}\n", bad.display()))
    );
    assert_eq!(
        rep.stderr,
        format!(
            "  FAILED:\n{}:4:5: group \"a\", rule 1, \"r\": field 'expr' must be set in rule\n",
            bad.display()
        )
    );

    // test.yaml repeats its alerts: a lint finding, fatal only on request.
    let t = conformance_dir().join("test.yaml");
    let rep = check(&[&t], false);
    assert_eq!(rep.exit_code, 0, "{rep:?}");
    assert!(
        rep.stderr
            .starts_with("  FAILED:\nlint error 1 duplicate rule(s) found.\nMetric: HighErrors\nLabel(s):\n\tseverity: critical\n"),
        "{}",
        rep.stderr
    );
    assert_eq!(check(&[&t], true).exit_code, 3);
    let missing = dir.path().join("nope.yml");
    assert_eq!(check(&[&missing], false).exit_code, 1);
}
