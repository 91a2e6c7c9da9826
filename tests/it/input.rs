//! Bad config and bad CLI input: exit 2, a clear message, nothing changed.

use super::harness::*;

fn audit_actions(env: &Env) -> Vec<String> {
    env.json(&["audit"])
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["action"].as_str().unwrap(),
                a["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn rejected_configs_exit_2_with_file_line_and_key_and_change_nothing() {
    let env = Env::start(Spec::default());
    let path = env.dir.path().join("ferry.toml");
    let good = std::fs::read_to_string(&path).unwrap();

    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("instances = 3", "instances = 0"),
            "services.web.instances",
        ),
        (
            good.replace("instances = 3", "instances = 3\ninstancez = 4"),
            "instancez",
        ),
        (
            good.replace("instances = 3", "instances = \"three\""),
            "ferry.toml:3",
        ),
        (
            good.replace(
                "strategy = \"rolling\"",
                "strategy = \"rolling\"\nmax_surge = 0\nmax_unavailable = 0",
            ),
            "max_surge = 0 with max_unavailable = 0",
        ),
        (
            good.replace("min_ready = \"300ms\"", "min_ready = \"300\""),
            "no unit",
        ),
    ];
    for (text, expect) in &cases {
        std::fs::write(&path, text).unwrap();
        let out = env.ferry_code(&["check"], 2);
        assert!(
            out.contains(expect) && out.contains("ferry.toml:"),
            "check: expected `{expect}` in:\n{out}"
        );
        let out = env.ferry_code(&["deploy", "web", "--version", "v1"], 2);
        assert!(
            out.contains(expect) && out.contains("nothing was changed"),
            "deploy: expected `{expect}` in:\n{out}"
        );
    }
    // A listen address someone else holds.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    std::fs::write(
        &path,
        good.replace(&format!("127.0.0.1:{}", env.port), &taken.to_string()),
    )
    .unwrap();
    let out = env.ferry_code(&["check"], 2);
    assert!(
        out.contains("already in use") && out.contains("services.web.listen"),
        "{out}"
    );
    let out = env.ferry_code(&["deploy", "web", "--version", "v1"], 2);
    assert!(out.contains("already in use"), "{out}");

    // Nothing was deployed by any of it.
    let out = env.ferry_code(&["history", "web"], 2);
    assert!(out.contains("no service `web`"), "{out}");
    assert!(env.marked_processes().is_empty());
    assert!(!audit_actions(&env).iter().any(|a| a == "deploy accepted"));

    std::fs::write(&path, &good).unwrap();
    let out = env.ferry_ok(&["check"]);
    assert!(
        out.contains("OK (1 service: web; 13 alerting and recording rules, routing from built-in)"),
        "{out}"
    );
}

#[test]
fn bad_cli_input_exits_2_before_anything_happens() {
    let env = Env::start(Spec::default());
    for (args, expect) in [
        (
            vec!["deploy", "web", "--version", "v1", "--set", "NOEQUALS"],
            "KEY=VALUE",
        ),
        (
            vec!["deploy", "web", "--version", "v1", "--set", "1BAD=x"],
            "not a valid environment variable",
        ),
        (
            vec!["deploy", "web", "--version", "bad version"],
            "--version",
        ),
        (
            vec!["deploy", "web", "--version", "v1", "--strategy", "sideways"],
            "use rolling, blue-green or canary",
        ),
        (
            vec!["deploy", "api", "--version", "v1"],
            "declares no service `api`; it declares: web",
        ),
        (vec!["deploy", "web"], "--version"),
        (
            vec![
                "deploy",
                "web",
                "--version",
                "v1",
                "--config",
                "missing.toml",
            ],
            "cannot read missing.toml",
        ),
        (
            vec!["rollback", "web", "--to-revision", "x"],
            "invalid value",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ] {
        let out = env.ferry_code(&args, 2);
        assert!(
            out.contains(expect),
            "{args:?}: expected `{expect}` in:\n{out}"
        );
    }
    // Gates with nothing to gate are refused (the operation fails: 1).
    let out = env.ferry_code(&["approve", "web"], 1);
    assert!(out.contains("no rollout in progress"), "{out}");
    assert!(env.marked_processes().is_empty());
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let env = Env::start(Spec::default());
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let out = env.ferry_ok(&["deploy", "web", "--version", "v2", "--dry-run"]);
    assert!(
        out.contains("batch 1:")
            && out.contains("deploy_timeout 10s")
            && out.contains("nothing was changed"),
        "{out}"
    );
    let out = env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v2",
        "--dry-run",
        "--strategy",
        "blue-green",
    ]);
    assert!(out.contains("ferry approve web"), "{out}");
    let history = env.json(&["history", "web"]);
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(env.json(&["status", "web"])["stable"], 1);
}
