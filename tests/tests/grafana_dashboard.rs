//! The Grafana dashboard `packaging/grafana/pikett.json` is valid JSON that Grafana can import
//! (a `${DS_PROMETHEUS}` datasource input, unique panel ids), and every metric its PromQL
//! queries use is one a real collector exports once a real agent has reported.

use std::collections::BTreeSet;
use std::time::Duration;

use pikett_tests::*;

fn dashboard() -> serde_json::Value {
    let path = workspace_root().join("packaging/grafana/pikett.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every panel, those nested in collapsed rows included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels is a list") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// The PromQL of every panel's targets and of the template variables' `label_values(…)`.
fn expressions(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("a target of {:?} has no expr", p["title"]));
            out.push(expr.to_string());
        }
    }
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let query = v["query"]["query"].as_str().or_else(|| v["query"].as_str()).unwrap_or_default();
        // label_values(SELECTOR, LABEL): only the selector is PromQL.
        if let Some(args) = query.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
            let selector = args.rsplit_once(',').map_or(args, |(s, _)| s);
            out.push(selector.to_string());
        }
    }
    out
}

/// PromQL functions, aggregations and keywords: words that are not metric names.
const NOT_METRICS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "and",
    "avg",
    "avg_over_time",
    "bool",
    "bottomk",
    "by",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "group_left",
    "group_right",
    "histogram_quantile",
    "holt_winters",
    "idelta",
    "ignoring",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log2",
    "log10",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "offset",
    "on",
    "or",
    "predict_linear",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev",
    "stdvar",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "unless",
    "vector",
    "without",
    "inf",
    "nan",
];

/// The metric names a PromQL expression uses: identifiers outside strings, label matchers
/// (`{…}`), ranges (`[…]`) and label lists (`by (…)`, `on (…)`, …), that are not
/// functions or keywords. Grafana variables (`$x`, `${x}`) are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // The previous word, to recognise the label list after `by`, `on`, ….
    let mut previous = String::new();
    let skip_to = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            if chars[i] == '"' || chars[i] == '\'' {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c);
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '('
            && matches!(previous.as_str(), "by" | "without" | "on" | "ignoring" | "group_left" | "group_right")
        {
            i = skip_to(i + 1, ')');
            previous.clear();
        } else if c == '$' {
            // $var, ${var}, $__rate_interval.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_to(i + 1, '}');
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // Numbers, 1e9 and 0x1f included.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let lower = word.to_ascii_lowercase();
            if next != Some(&'(') && !NOT_METRICS.contains(&lower.as_str()) {
                names.insert(word.clone());
            }
            previous = lower;
        } else {
            if !c.is_whitespace() {
                previous.clear();
            }
            i += 1;
        }
    }
    names
}

/// The names of the series in a Prometheus text exposition.
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

#[test]
fn the_tokenizer_finds_metric_names_and_nothing_else() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(pikett_store_commit_seconds_bucket{job="x",le!="1e9"}[$__rate_interval])))
           / on (host, customer) group_left pikett_host_cpus{customer=~"$customer"} * 1e3 + ${foo} - sum without(a)(b_metric offset 5m) and bool c:recorded"#,
    );
    let expected: BTreeSet<String> =
        ["pikett_store_commit_seconds_bucket", "pikett_host_cpus", "b_metric", "c:recorded"].map(String::from).into();
    assert_eq!(names, expected);
}

#[test]
fn the_dashboard_is_importable() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: {}", d["schemaVersion"]);
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS input: {inputs:?}"
    );
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()) && d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("panel {:?} has no id", p["title"]));
        assert!(ids.insert(id), "panel id {id} used twice");
        assert!(p["gridPos"]["w"].as_u64().is_some_and(|w| (1..=24).contains(&w)), "gridPos of {:?}", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "a panel without a title: {p}");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel {:?} has no queries", p["title"]));
        for source in std::iter::once(&p["datasource"]).chain(targets.iter().map(|t| &t["datasource"])) {
            assert_eq!(source["uid"], "${DS_PROMETHEUS}", "datasource of {:?}", p["title"]);
        }
    }
    assert!(ids.len() > 10, "only {} panels", ids.len());
}

#[test]
fn every_metric_the_dashboard_queries_is_exported_by_a_real_collector() {
    let d = dashboard();
    let wanted: BTreeSet<String> = expressions(&d).iter().flat_map(|e| metric_names(e)).collect();
    // The tokenizer must see what the dashboard is about, or this test would prove nothing.
    for name in ["pikett_hosts", "pikett_faults", "pikett_host_cpu_usage_percent", "pikett_store_commit_seconds_bucket"]
    {
        assert!(wanted.contains(name), "{name} not found in the dashboard's queries: {wanted:?}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let collector = CollectorSetup::new(dir.path(), &pki, "[faults]\nfor = 1\n");
    let _collector = collector.start();
    // A failing command check: faults, check samples and perfdata; the host probe: host samples.
    let check = ControlledCheck::new(dir.path());
    check.set(2);
    let agent_cfg = agent_config(
        dir.path(),
        &pki,
        "web01",
        &collector.url(),
        &format!("{}\n[host]\ninterval = \"1s\"\n", check.toml()),
    );
    let _agent = spawn("pikett-agent", &agent_cfg, &["run"], &dir.path().join("agent.log"));
    // Refused streams and connections appear only once one was refused: an agent presenting
    // another host's certificate, and a client that does not speak TLS.
    let impostor = dir.path().join("impostor.toml");
    std::fs::write(
        &impostor,
        format!(
            "host_id = \"impostor\"\ncollectors = [\"{}\"]\nspool_dir = \"{}\"\n[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            collector.url(),
            dir.path().join("impostor-spool").display(),
            pki.path("ca.pem"),
            pki.path("web01.pem"),
            pki.path("web01.key"),
        ),
    )
    .expect("write impostor config");
    let _impostor = spawn("pikett-agent", &impostor, &["run"], &dir.path().join("impostor.log"));
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", collector.grpc_port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.read(&mut [0u8; 64]);
    }

    let missing = |text: &str| -> Vec<String> {
        let exposed = exposed_names(text);
        wanted.iter().filter(|n| !exposed.contains(*n)).cloned().collect()
    };
    let mut last = String::new();
    let all_there = wait_for(Duration::from_secs(30), || {
        last = http_get(collector.http_port, "/metrics").map(|(_, body)| body).unwrap_or_default();
        missing(&last).is_empty().then_some(())
    });
    assert!(
        all_there.is_some(),
        "the dashboard queries metrics the collector does not export: {:?}\n/metrics:\n{last}",
        missing(&last)
    );
}
