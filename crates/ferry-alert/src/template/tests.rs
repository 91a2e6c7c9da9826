use super::*;
use crate::alert::LabelSet;
use crate::notify::{Notification, NotifyAlert, Status};

fn ls(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn prom_env() -> Env<'static> {
    Env {
        flavor: Flavor::Prometheus,
        query: None,
        now_ms: 1_353_755_652_000,
        external_url: "http://testhost:9090/path/prefix".into(),
        missingkey_zero: false,
        kv_methods: false,
    }
}

/// Run `text` as Prometheus's expander would (name "test"), on `data`.
fn run(text: &str, data: Value) -> Result<String, String> {
    let env = prom_env();
    let t = Template::parse("test", text, Flavor::Prometheus)
        .map_err(|e| format!("error parsing template test: {e}"))?;
    t.execute(data, &env)
        .map_err(|e| format!("error executing template test: {e}"))
}

fn ok(text: &str) -> String {
    match run(text, Value::Nil) {
        Ok(s) => s,
        Err(e) => panic!("{text}: {e}"),
    }
}

fn floats(v: &[f64]) -> Value {
    Value::list(v.iter().map(|f| Value::Float(*f)).collect())
}

fn strs(v: &[&str]) -> Value {
    Value::list(v.iter().map(|s| Value::str(*s)).collect())
}

fn ints(v: &[i64]) -> Value {
    Value::list(v.iter().map(|i| Value::Int(*i)).collect())
}

#[test]
fn basics() {
    assert_eq!(ok("plain text"), "plain text");
    assert_eq!(ok("{{ 1 }}"), "1");
    assert_eq!(ok("{{ \"<b>\" }}"), "<b>");
    assert_eq!(ok("{{ .Foo }}"), "<no value>");
    assert_eq!(ok("a {{- \" b \" -}} c"), "a b c");
    assert_eq!(ok("a  \n {{- 1 }}  \n {{- 2 -}}\n  x"), "a12x");
    assert_eq!(ok("x{{/* comment */}}y"), "xy");
    assert_eq!(ok("x {{- /* comment */ -}} y"), "xy");
    assert_eq!(ok("{{ `raw\\n` }}"), "raw\\n");
    assert_eq!(ok("{{ \"a\\tb\\u00e9\" }}"), "a\tbé");
    assert_eq!(ok("{{ 'a' }}"), "97");
    assert_eq!(
        ok("{{ 1.5 }} {{ 1e3 }} {{ 0x10 }} {{ -3 }}"),
        "1.5 1000 16 -3"
    );
    assert_eq!(ok("{{ true }} {{ false }}"), "true false");
    assert_eq!(ok("{{ $x := 1 }}{{ $x = 2 }}{{ $x }}"), "2");
    assert_eq!(ok("{{ (print \"a\" \"b\") }}"), "ab");
}

#[test]
fn go_fmt() {
    assert_eq!(ok("{{ print 1 2 \"a\" 3 \"b\" \"c\" }}"), "1 2a3bc");
    assert_eq!(ok("{{ println 1 \"a\" }}"), "1 a\n");
    assert_eq!(
        ok("{{ printf \"%s=%d %5.2f|%-4s|%4s|%04d\" \"a\" 42 3.14159 \"x\" \"y\" 7 }}"),
        "a=42  3.14|x   |   y|0007"
    );
    assert_eq!(
        ok("{{ printf \"%v %v %v\" 1.0 1234567.0 0.000012 }}"),
        "1 1.234567e+06 1.2e-05"
    );
    assert_eq!(
        ok("{{ printf \"%g %e %.3g %G\" 100000.0 1234.5678 3.14159 1e-7 }}"),
        "100000 1.234568e+03 3.14 1E-07"
    );
    assert_eq!(
        ok("{{ printf \"%q %x %X %%\" \"hi\\\"\" \"hi\" 255 }}"),
        "\"hi\\\"\" 6869 FF %"
    );
    assert_eq!(ok("{{ printf \"%d\" }}"), "%!d(MISSING)");
    assert_eq!(ok("{{ printf \"%d\" \"x\" }}"), "%!d(string=x)");
    assert_eq!(ok("{{ printf \"a\" 1 }}"), "a%!(EXTRA int=1)");
    assert_eq!(ok("{{ printf \"%0.2f\" 3720.01 }}"), "3720.01");
    assert_eq!(
        ok("{{ printf \"%t %c %o %b\" true 65 8 5 }}"),
        "true A 10 101"
    );
    assert_eq!(ok("{{ printf \"%+d % d %x\" 5 5 \"\" }}"), "+5  5 ");
    assert_eq!(
        ok("{{ printf \"%.1s|%6.1f|%-8v|\" \"abc\" -2.25 true }}"),
        "a|  -2.2|true    |"
    );
    assert_eq!(
        ok("{{ html \"<a href='x'>&\" }}"),
        "&lt;a href=&#39;x&#39;&gt;&amp;"
    );
    assert_eq!(
        ok("{{ js \"a'b\\\"<>=\" }}"),
        "a\\'b\\\"\\u003C\\u003E\\u003D"
    );
    assert_eq!(ok("{{ urlquery \"a b&c/d\" }}"), "a+b%26c%2Fd");
}

#[test]
fn control_structures() {
    assert_eq!(
        ok("{{ if 0 }}a{{ else if \"\" }}b{{ else if 1 }}c{{ else }}d{{ end }}"),
        "c"
    );
    assert_eq!(
        ok("{{ if and 1 0 }}a{{ else }}b{{ end }}{{ or 0 \"\" 3 }}{{ and 1 2 }}"),
        "b32"
    );
    assert_eq!(ok("{{ not 0 }} {{ not 1 }}"), "true false");
    assert_eq!(
        ok("{{ with \"x\" }}{{ . }}{{ end }}{{ with \"\" }}y{{ else }}z{{ end }}"),
        "xz"
    );
    assert_eq!(ok("{{ with 0 }}a{{ else with 2 }}{{ . }}{{ end }}"), "2");
    assert_eq!(
        ok("{{ range $i, $v := . }}{{ $i }}={{ $v }};{{ end }}").len(),
        0
    );
    let m = Value::labels(&ls(&[("b", "2"), ("a", "1"), ("c", "3")]));
    assert_eq!(
        run(
            "{{ range $k, $v := . }}{{ $k }}={{ $v }};{{ end }}",
            m.clone()
        )
        .unwrap(),
        "a=1;b=2;c=3;"
    );
    assert_eq!(run("{{ range . }}{{ . }}{{ end }}", m).unwrap(), "123");
    assert_eq!(
        run(
            "{{ range $i, $v := . }}{{ $i }}{{ $v }}{{ end }}",
            strs(&["x", "y"])
        )
        .unwrap(),
        "0x1y"
    );
    assert_eq!(
        run("{{ range . }}x{{ else }}empty{{ end }}", strs(&[])).unwrap(),
        "empty"
    );
    assert_eq!(
        run("{{ range . }}{{ if eq . 3 }}{{ continue }}{{ end }}{{ if eq . 5 }}{{ break }}{{ end }}{{ . }}{{ end }}", ints(&[1, 2, 3, 4, 5, 6])).unwrap(),
        "124"
    );
    assert_eq!(ok("{{ range 3 }}{{ . }}{{ end }}"), "012");
    assert_eq!(
        ok("{{ $x := 0 }}{{ range 3 }}{{ $x = . }}{{ end }}{{ $x }}"),
        "2"
    );
    // Variables declared in a block are gone after it.
    assert!(
        run("{{ if 1 }}{{ $y := 1 }}{{ end }}{{ $y }}", Value::Nil)
            .unwrap_err()
            .contains("undefined variable \"$y\"")
    );
}

#[test]
fn define_template_block() {
    assert_eq!(
        ok("{{define \"x\"}}[{{.}}]{{end}}{{template \"x\" 5}}{{template \"x\"}}"),
        "[5][<no value>]"
    );
    assert_eq!(ok("{{block \"b\" \"d\"}}<{{.}}>{{end}}"), "<d>");
    assert_eq!(
        ok("{{define \"x\"}}{{.arg0}} {{.arg1}}{{end}}{{template \"x\" (args 1 \"2\")}}"),
        "1 2"
    );
    let e = run("{{template \"nope\"}}", Value::Nil).unwrap_err();
    assert_eq!(
        e,
        "error executing template test: template: test:1:11: executing \"test\" at <{{template \"nope\"}}>: template \"nope\" not defined"
    );
    // Unbounded recursion is an error, not a crash.
    let e = run(
        "{{define \"r\"}}{{template \"r\" .}}{{end}}{{template \"r\" 1}}",
        Value::Nil,
    )
    .unwrap_err();
    assert!(e.contains("exceeded maximum template depth (100)"), "{e}");
}

#[test]
fn comparisons_and_builtins() {
    assert_eq!(
        ok(
            "{{ eq 1 1 }} {{ eq 1 2 3 1 }} {{ ne \"a\" \"b\" }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 1.5 2.5 }} {{ ge \"b\" \"a\" }}"
        ),
        "true true true true true false true"
    );
    assert_eq!(
        ok("{{ len \"abc\" }} {{ index \"abc\" 1 }} {{ slice \"abcdef\" 1 3 }}"),
        "3 98 bc"
    );
    assert_eq!(
        run(
            "{{ index . 1 }} {{ slice . 1 }} {{ len . }}",
            strs(&["a", "b", "c"])
        )
        .unwrap(),
        "b [b c] 3"
    );
    let m = Value::labels(&ls(&[("a", "1")]));
    assert_eq!(
        run("{{ index . \"a\" }}|{{ index . \"zz\" }}|{{ .zz }}", m).unwrap(),
        "1||<no value>"
    );
    let e = run("{{ eq 1 1.0 }}", Value::Nil).unwrap_err();
    assert!(
        e.ends_with("error calling eq: incompatible types for comparison"),
        "{e}"
    );
    let e = run("{{ index . 5 }}", strs(&["a"])).unwrap_err();
    assert!(
        e.ends_with("error calling index: index out of range: 5"),
        "{e}"
    );
    let e = run("{{ len 3 }}", Value::Nil).unwrap_err();
    assert!(e.ends_with("error calling len: len of type int"), "{e}");
}

#[test]
fn parse_errors_like_go() {
    let e = |t: &str| run(t, Value::Nil).unwrap_err();
    assert_eq!(
        e("{{"),
        "error parsing template test: template: test:1: unclosed action"
    );
    assert_eq!(
        e("{{ }}"),
        "error parsing template test: template: test:1: missing value for command"
    );
    assert_eq!(
        e("{{ nosuch 1 }}"),
        "error parsing template test: template: test:1: function \"nosuch\" not defined"
    );
    assert_eq!(
        e("a\n{{ $x }}"),
        "error parsing template test: template: test:2: undefined variable \"$x\""
    );
    assert_eq!(
        e("{{ if 1 }}"),
        "error parsing template test: template: test:1: unexpected EOF"
    );
    assert_eq!(
        e("{{ end }}"),
        "error parsing template test: template: test:1: unexpected {{end}}"
    );
    assert_eq!(
        e("{{ \"abc }}"),
        "error parsing template test: template: test:1: unterminated quoted string"
    );
    assert_eq!(
        e("{{ 1\u{a0}}}"),
        "error parsing template test: template: test:1: unrecognized character in action: U+00A0"
    );
    assert_eq!(
        e("{{ break }}"),
        "error parsing template test: template: test:1: {{break}} outside {{range}}"
    );
    assert_eq!(
        e("{{/* x */ 1 }}"),
        "error parsing template test: template: test:1: comment ends before closing delimiter"
    );
    assert_eq!(
        e("{{ (1 }}"),
        "error parsing template test: template: test:1: unclosed left paren"
    );
    assert_eq!(
        e("{{ 1 | 2 }}"),
        "error parsing template test: template: test:1: non executable command in pipeline stage 2"
    );
}

#[test]
fn exec_errors_like_go() {
    let q: QueryFn<'_> = &|_q| Ok(Vec::new());
    let env = Env {
        query: Some(q),
        ..prom_env()
    };
    let t = Template::parse(
        "test",
        "{{ query \"missing\" | first }}",
        Flavor::Prometheus,
    )
    .unwrap();
    assert_eq!(
        t.execute(Value::Nil, &env).unwrap_err(),
        "template: test:1:21: executing \"test\" at <first>: error calling first: first() called on vector with no elements"
    );
    assert_eq!(
        run("{{ humanize \"one\" }}", Value::Nil).unwrap_err(),
        "error executing template test: template: test:1:3: executing \"test\" at <humanize \"one\">: error calling humanize: strconv.ParseFloat: parsing \"one\": invalid syntax"
    );
    assert_eq!(
        run("{{ \"one\" | humanizePercentage }}", Value::Nil).unwrap_err(),
        "error executing template test: template: test:1:11: executing \"test\" at <humanizePercentage>: error calling humanizePercentage: strconv.ParseFloat: parsing \"one\": invalid syntax"
    );
    assert_eq!(
        run(
            "{{ range . }}{{ humanizeTimestamp . }}:{{ end }}",
            ints(&[i64::MIN])
        )
        .unwrap_err(),
        "error executing template test: template: test:1:16: executing \"test\" at <humanizeTimestamp .>: error calling humanizeTimestamp: -9.223372036854776e+18 cannot be represented as a nanoseconds timestamp since it overflows int64"
    );
    let e = run("{{ humanize 1 2 }}", Value::Nil).unwrap_err();
    assert!(
        e.ends_with("at <humanize>: wrong number of args for humanize: want 1 got 2"),
        "{e}"
    );
}

#[test]
fn humanize_family() {
    assert_eq!(
        run(
            "{{ range . }}{{ humanize . }}:{{ end }}",
            floats(&[0.0, 1.0, 1234567.0, 0.12])
        )
        .unwrap(),
        "0:1:1.235M:120m:"
    );
    assert_eq!(
        run(
            "{{ range . }}{{ humanize . }}:{{ end }}",
            strs(&["0.0", "1.0", "1234567.0", ".12"])
        )
        .unwrap(),
        "0:1:1.235M:120m:"
    );
    assert_eq!(
        run(
            "{{ range . }}{{ humanize . }}:{{ end }}",
            ints(&[0, -1, 1, 1234567, i64::MAX])
        )
        .unwrap(),
        "0:-1:1:1.235M:9.223E:"
    );
    assert_eq!(humanize(0.001234), "1.234m");
    assert_eq!(
        run(
            "{{ range . }}{{ humanize1024 . }}:{{ end }}",
            floats(&[0.0, 1.0, 1048576.0, 0.12])
        )
        .unwrap(),
        "0:1:1Mi:0.12:"
    );
    assert_eq!(
        run(
            "{{ range . }}{{ humanize1024 . }}:{{ end }}",
            ints(&[0, -1, 1, 1234567, i64::MAX])
        )
        .unwrap(),
        "0:-1:1:1.177Mi:8Ei:"
    );
    assert_eq!(
        run(
            "{{ range . }}{{ humanizeDuration . }}:{{ end }}",
            floats(&[
                0.0,
                1.0,
                60.0,
                3600.0,
                86400.0,
                86400.0 + 3600.0,
                -(86400.0 * 2.0 + 3600.0 * 3.0 + 60.0 * 4.0 + 5.0),
                899.99
            ])
        )
        .unwrap(),
        "0s:1s:1m 0s:1h 0m 0s:1d 0h 0m 0s:1d 1h 0m 0s:-2d 3h 4m 5s:14m 59s:"
    );
    assert_eq!(
        run(
            "{{ range . }}{{ humanizeDuration . }}:{{ end }}",
            floats(&[0.1, 0.0001, 0.12345, 60.1, 60.5, 1.2345, 12.345])
        )
        .unwrap(),
        "100ms:100us:123.5ms:1m 0s:1m 0s:1.234s:12.35s:"
    );
    assert_eq!(humanize_duration(90.0), "1m 30s");
    assert_eq!(humanize_duration(0.0012), "1.2ms");
    assert_eq!(
        run("{{ range . }}{{ humanize . }}:{{ humanize1024 . }}:{{ humanizeDuration . }}:{{humanizeTimestamp .}}:{{ end }}", floats(&[f64::INFINITY, f64::NEG_INFINITY, f64::NAN])).unwrap(),
        "+Inf:+Inf:+Inf:+Inf:-Inf:-Inf:-Inf:-Inf:NaN:NaN:NaN:NaN:"
    );
    assert_eq!(
        ok(
            "{{ -0.22222 | humanizePercentage }}:{{ 0.0 | humanizePercentage }}:{{ 0.1234567 | humanizePercentage }}:{{ 1.23456 | humanizePercentage }}"
        ),
        "-22.22%:0%:12.35%:123.5%"
    );
    assert_eq!(humanize_percentage(0.1234), "12.34%");
    assert_eq!(
        run(
            "{{ range . }}{{ humanizePercentage . }}:{{ end }}",
            ints(&[0, -1, 1, 1234567, i64::MAX])
        )
        .unwrap(),
        "0%:-100%:100%:1.235e+08%:9.223e+20%:"
    );
    assert_eq!(
        run(
            "{{ range . }}{{ humanizeTimestamp . }}:{{ end }}",
            ints(&[0, -1, 1, 1234567, 9223372036])
        )
        .unwrap(),
        "1970-01-01 00:00:00 +0000 UTC:1969-12-31 23:59:59 +0000 UTC:1970-01-01 00:00:01 +0000 UTC:1970-01-15 06:56:07 +0000 UTC:2262-04-11 23:47:16 +0000 UTC:"
    );
    assert_eq!(
        ok("{{ 1435065584.128 | humanizeTimestamp }}"),
        "2015-06-23 13:19:44.128 +0000 UTC"
    );
    assert_eq!(
        ok("{{ \"1435065584.128\" | humanizeTimestamp }}"),
        "2015-06-23 13:19:44.128 +0000 UTC"
    );
}

#[test]
fn prometheus_functions() {
    assert_eq!(
        ok("{{ (1435065584.128 | toTime).Format \"2006\" }}"),
        "2015"
    );
    assert_eq!(ok("{{ (1800 | toDuration).String }}"), "30m0s");
    assert_eq!(ok("{{ (\"1800\" | toDuration).String }}"), "30m0s");
    assert_eq!(ok("{{ now }}"), "1.353755652e+09");
    assert_eq!(
        ok("{{ (now | toTime).Format \"Mon Jan 2 15:04:05 2006\" }}"),
        "Sat Nov 24 11:14:12 2012"
    );
    assert_eq!(
        ok("{{ (\"-30m\" | parseDuration | toDuration | (now | toTime).Add).UnixMilli }}"),
        "1353753852000"
    );
    assert_eq!(ok("{{ \"aa bb CC\" | title }}"), "Aa Bb CC");
    assert_eq!(ok("{{ \"aa bb CC\" | toUpper }}"), "AA BB CC");
    assert_eq!(ok("{{ \"aA bB CC\" | toLower }}"), "aa bb cc");
    assert_eq!(
        ok("{{ match \"a+\" \"aa\" }} {{ match \"a+\" \"b\" }}"),
        "true false"
    );
    assert_eq!(ok("{{ reReplaceAll \"(a)b\" \"x$1\" \"ab\" }}"), "xa");
    assert_eq!(ok("{{ graphLink \"up\" }}"), "/graph?g0.expr=up&g0.tab=0");
    assert_eq!(
        ok("{{ tableLink \"rate(x[5m])\" }}"),
        "/graph?g0.expr=rate%28x%5B5m%5D%29&g0.tab=1"
    );
    assert_eq!(ok("{{ pathPrefix }}"), "/path/prefix");
    assert_eq!(ok("{{ externalURL }}"), "http://testhost:9090/path/prefix");
    assert_eq!(
        ok("{{ printf \"%0.2f\" (parseDuration \"1h2m10ms\") }}"),
        "3720.01"
    );
    assert_eq!(
        ok("{{ printf \"%0.2f\" (parseDuration \"-1h2m10ms\") }}"),
        "-3720.01"
    );
    assert_eq!(ok("{{ urlQueryEscape \"a b/c\" }}"), "a+b%2Fc");
    assert_eq!(ok("{{ \"<b>\" | safeHtml }}"), "<b>");
    for (input, port, domain) in [
        ("foo.example.com", "foo.example.com", "foo"),
        ("foo.example.com:12345", "foo.example.com", "foo:12345"),
        ("192.0.2.1", "192.0.2.1", "192.0.2.1"),
        ("192.0.2.1:12345", "192.0.2.1", "192.0.2.1:12345"),
        ("2001:0DB8::1", "2001:0DB8::1", "2001:0DB8::1"),
        (
            "[2001:0DB8::1]:12345",
            "2001:0DB8::1",
            "[2001:0DB8::1]:12345",
        ),
        (
            "[2001:0DB8::1]::12345",
            "[2001:0DB8::1]::12345",
            "[2001:0DB8::1]::12345",
        ),
    ] {
        assert_eq!(
            ok(&format!("{{{{ {input:?} | stripPort }}}}")),
            port,
            "{input}"
        );
        assert_eq!(
            ok(&format!("{{{{ {input:?} | stripDomain }}}}")),
            domain,
            "{input}"
        );
    }
}

#[test]
fn query_function() {
    let q: QueryFn<'_> = &|q: &str| match q {
        "1.5" => Ok(vec![(LabelSet::new(), 1.5)]),
        "metric" => Ok(vec![
            (ls(&[("__name__", "metric"), ("instance", "b")]), 21.0),
            (ls(&[("__name__", "metric"), ("instance", "a")]), 11.0),
        ]),
        "strs" => Ok(vec![(ls(&[("__value__", "a")]), 0.0)]),
        _ => Err("bad query".into()),
    };
    let env = Env {
        query: Some(q),
        ..prom_env()
    };
    let go = |t: &str| {
        Template::parse("test", t, Flavor::Prometheus)
            .unwrap()
            .execute(Value::Nil, &env)
    };
    assert_eq!(go("{{ query \"1.5\" | first | value }}").unwrap(), "1.5");
    assert_eq!(
        go("{{ query \"metric\" | first | label \"instance\" }}").unwrap(),
        "b"
    );
    assert_eq!(
        go("{{ query \"metric\" | first | label \"foo\" }}").unwrap(),
        ""
    );
    assert_eq!(go("{{ query \"strs\" | first | strvalue }}").unwrap(), "a");
    assert_eq!(
        go("{{ $x := query \"metric\" | first }}{{ $x.Labels.foo }}").unwrap(),
        "<no value>"
    );
    assert_eq!(
        go("{{ range query \"metric\" | sortByLabel \"instance\" }}{{.Labels.instance}}:{{.Value}}: {{end}}").unwrap(),
        "a:11: b:21: "
    );
    assert_eq!(
        go("{{ with query \"metric\" }}{{ len . }}{{ end }}").unwrap(),
        "2"
    );
    assert!(
        go("{{ query \"oops\" }}")
            .unwrap_err()
            .ends_with("error calling query: bad query")
    );
    // Through expand_alert, with the rule's data.
    let labels = ls(&[("instance", "a")]);
    let ext = LabelSet::new();
    let data = AlertData {
        labels: &labels,
        external_labels: &ext,
        external_url: "http://p:9090",
        value: 2.0,
    };
    assert_eq!(
        expand_alert(
            "X",
            "{{ with query \"metric\" }}{{ . | first | value | humanize }}{{ end }}",
            &data,
            Some(q),
            0
        ),
        "21"
    );
}

fn alert_data_eval(text: &str) -> String {
    let labels = ls(&[("instance", "host:9100"), ("job", "node")]);
    let ext = ls(&[("cluster", "eu")]);
    let data = AlertData {
        labels: &labels,
        external_labels: &ext,
        external_url: "http://prom:9090/p",
        value: 1234567.0,
    };
    expand_alert("HighLoad", text, &data, None, 1_000)
}

#[test]
fn expand_alert_prometheus_style() {
    assert_eq!(
        alert_data_eval("{{ $labels.instance }} is at {{ $value | humanize }}"),
        "host:9100 is at 1.235M"
    );
    assert_eq!(
        alert_data_eval("{{ $externalLabels.cluster }} {{ $externalURL }} {{ .Labels.job }}"),
        "eu http://prom:9090/p node"
    );
    // missingkey=zero: a missing label is empty.
    assert_eq!(alert_data_eval("[{{ $labels.nope }}]"), "[]");
    assert_eq!(alert_data_eval("{{ $value }}"), "1.234567e+06");
    assert_eq!(
        alert_data_eval("{{ printf \"%.2f\" $value }}"),
        "1234567.00"
    );
    assert_eq!(
        alert_data_eval("{{ nosuch }}"),
        "<error expanding template: error parsing template __alert_HighLoad: template: __alert_HighLoad:1: function \"nosuch\" not defined>"
    );
    let e = alert_data_eval("{{ .Foo }}");
    assert_eq!(
        e,
        "<error expanding template: error executing template __alert_HighLoad: template: __alert_HighLoad:1:115: executing \"__alert_HighLoad\" at <.Foo>: can't evaluate field Foo in type struct { Labels map[string]string; ExternalLabels map[string]string; ExternalURL string; Value interface {} }>"
    );
    assert!(check_alert("{{ $labels.x | toUpper }}").is_ok());
    assert_eq!(
        check_alert_named("A", "{{ nosuch }}").unwrap_err(),
        "template: __alert_A:1: function \"nosuch\" not defined"
    );
    // Alertmanager-only functions are not Prometheus's.
    assert!(check_alert("{{ \"a\" | trimSpace }}").is_err());
}

fn notification() -> Notification {
    let alert = |name: &str, inst: &str, status: Status| NotifyAlert {
        status,
        labels: ls(&[("alertname", name), ("instance", inst), ("job", "api")]),
        annotations: ls(&[("summary", &format!("{name} on {inst}"))]),
        starts_at: 1_700_000_000_000,
        ends_at: if status == Status::Resolved {
            1_700_000_600_500
        } else {
            0
        },
        generator_url: "http://prom/graph".into(),
        fingerprint: "0123456789abcdef".into(),
    };
    Notification {
        receiver: "team-x".into(),
        group_key: "{}:{alertname=\"HighLatency\"}".into(),
        status: Status::Firing,
        group_labels: ls(&[("alertname", "HighLatency"), ("job", "api")]),
        common_labels: ls(&[
            ("alertname", "HighLatency"),
            ("job", "api"),
            ("severity", "page"),
        ]),
        common_annotations: LabelSet::new(),
        route_labels: LabelSet::new(),
        external_url: "http://am:9093".into(),
        alerts: vec![
            alert("HighLatency", "a", Status::Firing),
            alert("HighLatency", "b", Status::Resolved),
            alert("HighLatency", "c", Status::Firing),
        ],
        truncated_alerts: 0,
        reason: "new alerts".into(),
    }
}

#[test]
fn notification_templates() {
    let n = notification();
    let go = |t: &str| {
        expand_notification_at(t, &n, 1_700_000_060_000).unwrap_or_else(|e| panic!("{t}: {e}"))
    };
    assert_eq!(
        go("{{ range .Alerts.Firing }}{{ .Labels.instance }}{{ end }}"),
        "ac"
    );
    assert_eq!(
        go("{{ range .Alerts.Resolved }}{{ .Labels.instance }} {{ .EndsAt }}{{ end }}"),
        "b 2023-11-14 22:23:20.5 +0000 UTC"
    );
    assert_eq!(
        go("{{ (index .Alerts 0).EndsAt }}"),
        "0001-01-01 00:00:00 +0000 UTC"
    );
    // Alertmanager's default Slack title.
    assert_eq!(
        go(
            "[{{ .Status | toUpper }}{{ if eq .Status \"firing\" }}:{{ .Alerts.Firing | len }}{{ end }}] {{ .GroupLabels.SortedPairs.Values | join \" \" }} {{ if gt (len .CommonLabels) (len .GroupLabels) }}({{ with .CommonLabels.Remove .GroupLabels.Names }}{{ .Values | join \" \" }}{{ end }}){{ end }}"
        ),
        "[FIRING:2] HighLatency api (page)"
    );
    assert_eq!(
        go("{{ .CommonLabels.SortedPairs }}"),
        "[{alertname HighLatency} {job api} {severity page}]"
    );
    assert_eq!(
        go("{{ range .CommonLabels.SortedPairs }}{{ .Name }}={{ .Value }} {{ end }}"),
        "alertname=HighLatency job=api severity=page "
    );
    assert_eq!(go("{{ .GroupLabels.Names }}"), "[alertname job]");
    assert_eq!(
        go("{{ .Receiver }}|{{ .ExternalURL }}|{{ .GroupKey }}|{{ .CommonAnnotations.nope }}"),
        "team-x|http://am:9093|{}:{alertname=\"HighLatency\"}|"
    );
    assert_eq!(
        go("{{ range .Alerts }}{{ .Annotations.summary }};{{ end }}"),
        "HighLatency on a;HighLatency on b;HighLatency on c;"
    );
    assert_eq!(
        go("{{ (index .Alerts 0).StartsAt | date \"2006-01-02T15:04:05Z07:00\" }}"),
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(go("{{ (index .Alerts 0).StartsAt | since }}"), "1m0s");
    assert_eq!(
        go("{{ humanizeDuration 90 }} {{ \"  x \" | trimSpace }} {{ \"hELLO wORLD\" | title }}"),
        "1m 30s x Hello World"
    );
    assert_eq!(
        go("{{ toJson .GroupLabels }}"),
        "{\"alertname\":\"HighLatency\",\"job\":\"api\"}"
    );
    assert_eq!(
        go("{{ $d := dict \"a\" 1 \"b\" (list 1 2) }}{{ $d.a }} {{ $d.b }} {{ append $d.b 3 }}"),
        "1 [1 2] [1 2 3]"
    );
    assert_eq!(go("{{ stringSlice \"a\" \"b\" | join \",\" }}"), "a,b");
    assert_eq!(
        go("{{ define \"t\" }}{{ .Status }}{{ end }}{{ template \"t\" . }}"),
        "firing"
    );
    assert_eq!(
        expand_notification("{{ .Fingerprint }}", &n).unwrap_err(),
        "template: :1:3: executing \"\" at <.Fingerprint>: can't evaluate field Fingerprint in type *template.Data"
    );
    // Parse errors name the (empty) template as Alertmanager's do.
    assert_eq!(
        expand_notification("{{ humanize 1 }}", &n).unwrap_err(),
        "template: :1: function \"humanize\" not defined"
    );
}

#[test]
fn limits_are_errors() {
    // Output cap.
    let e = ok_err("{{ range 2000000 }}xxxxxxxxxx{{ end }}");
    assert!(e.contains("exceeds") || e.contains("steps"), "{e}");
    // Doubling a string grows past the cap.
    let e = ok_err(
        "{{ $s := \"xxxxxxxxxxxxxxxx\" }}{{ range 40 }}{{ $s = printf \"%s%s\" $s $s }}{{ end }}",
    );
    assert!(e.contains("exceeds"), "{e}");
    // Deep nesting is a parse error.
    let deep = "(".repeat(500) + "1" + &")".repeat(500);
    assert!(ok_err(&format!("{{{{ {deep} }}}}")).contains("max expression depth exceeded"));
    // Many nested steps.
    let e = ok_err("{{ range 3000 }}{{ range 3000 }}{{ end }}{{ end }}");
    assert!(e.contains("steps"), "{e}");
}

fn ok_err(text: &str) -> String {
    run(text, Value::Nil).unwrap_err()
}

/// A small deterministic generator: parsing and executing arbitrary input
/// never panics.
#[test]
fn random_input_never_panics() {
    let pieces = [
        "{{",
        "}}",
        "{{-",
        "-}}",
        " ",
        "if",
        "else",
        "end",
        "range",
        "with",
        "define",
        "template",
        "block",
        "break",
        "continue",
        "$x",
        ":=",
        "=",
        "$",
        ".",
        ".A",
        ".Labels.x",
        "|",
        "(",
        ")",
        "\"s\"",
        "`r`",
        "'c'",
        "1",
        "-2.5",
        "0x1F",
        "true",
        "nil",
        "printf",
        "\"%d%s%v%5.2f\"",
        "len",
        "index",
        "slice",
        "eq",
        "lt",
        "and",
        "or",
        "not",
        "humanize",
        "title",
        "query",
        "first",
        "args",
        "/*",
        "*/",
        "\n",
        "x",
        "é",
        "\u{a0}",
        ",",
        "\\",
        "\"",
    ];
    let mut seed: u64 = 0x2545F4914F6CDD1D;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let env = prom_env();
    for _ in 0..20_000 {
        let n = (next() % 12) as usize + 1;
        let mut s = String::new();
        for _ in 0..n {
            s.push_str(pieces[(next() % pieces.len() as u64) as usize]);
        }
        if let Ok(t) = Template::parse("fuzz", &s, Flavor::Prometheus) {
            let _ = t.execute(floats(&[1.0, 2.0]), &env);
        }
        let _ = Template::parse("fuzz", &s, Flavor::Alertmanager);
    }
    // Raw bytes-ish strings too.
    for _ in 0..5_000 {
        let n = (next() % 40) as usize;
        let s: String = (0..n)
            .map(|_| char::from_u32((next() % 128) as u32).unwrap_or('x'))
            .collect();
        if let Ok(t) = Template::parse("fuzz", &s, Flavor::Prometheus) {
            let _ = t.execute(Value::Nil, &env);
        }
    }
}
