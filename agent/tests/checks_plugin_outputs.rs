//! The perfdata parser on real recorded plugin outputs (see testdata/README.md).

use jiff::Timestamp;
use pikett_agent::observation::{Observation, State};
use pikett_agent::probes::checks::command::evaluate;
use pikett_agent::probes::checks::perfdata::{Exit, parse_plugin_output};

fn recorded(name: &str) -> String {
    let path = format!("{}/testdata/checks/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (label, uom) of every perfdata item, asserting none failed to parse.
fn items(name: &str) -> (String, Vec<(String, String)>) {
    let out = parse_plugin_output(&recorded(name));
    assert!(out.perf_errors.is_empty(), "{name}: {:?}", out.perf_errors);
    (out.summary, out.perfdata.into_iter().map(|d| (d.label, d.uom)).collect())
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn check_disk() {
    let (summary, perf) = items("check_disk_root.out");
    assert!(summary.starts_with("DISK OK - free space: / "), "{summary}");
    assert_eq!(perf, pairs(&[("/", "B")]));
    let d = &parse_plugin_output(&recorded("check_disk_root.out")).perfdata[0];
    assert!(d.warn.is_some() && d.crit.is_some() && d.min == Some(0.0) && d.max.unwrap() > d.value.unwrap());
}

#[test]
fn check_http_and_tcp() {
    let (summary, perf) = items("check_http_ok.out");
    assert!(summary.starts_with("HTTP OK: HTTP/1.0 200 OK"), "{summary}");
    assert_eq!(perf, pairs(&[("time", "s"), ("size", "B")]));
    let (summary, perf) = items("check_tcp_ok.out");
    assert!(summary.starts_with("TCP OK"), "{summary}");
    assert_eq!(perf, pairs(&[("time", "s")]));
    let (summary, perf) = items("check_tcp_refused.out");
    assert_eq!(summary, "connect to address 127.0.0.1 and port 1: Connection refused");
    assert!(perf.is_empty());
}

#[test]
fn check_load_with_trailing_space() {
    let (_, perf) = items("check_load.out");
    assert_eq!(perf, pairs(&[("load1", ""), ("load5", ""), ("load15", "")]));
    let d = &parse_plugin_output(&recorded("check_load.out")).perfdata[0];
    assert_eq!(d.warn.unwrap().end, 100.0);
    assert_eq!(d.crit.unwrap().end, 200.0);
    assert_eq!(d.max, None);
}

#[test]
fn check_procs_users_swap() {
    assert_eq!(items("check_procs.out").1, pairs(&[("procs", "")]));
    assert_eq!(items("check_users.out").1, pairs(&[("users", "")]));
    let (summary, perf) = items("check_swap.out");
    assert!(summary.starts_with("SWAP CRITICAL"), "{summary}");
    assert_eq!(perf, pairs(&[("swap", "B")]));
}

#[test]
fn recorded_disk_output_becomes_byte_samples() {
    let now = Timestamp::now();
    let obs = evaluate(
        "command/raid",
        "check_disk",
        Exit::Code(0),
        recorded("check_disk_root.out").as_bytes(),
        false,
        b"",
        now,
    );
    let Observation::Check(c) = &obs[0] else { panic!("{obs:?}") };
    assert_eq!(c.state, State::Ok);
    let Observation::Sample(s) = &obs[1] else { panic!("{obs:?}") };
    assert_eq!((s.name.as_str(), s.unit.as_str()), ("pikett_check_perfdata", "By"));
    assert_eq!(s.labels["label"], "/");
    assert_eq!(s.labels["min"], "0");
    assert!(s.labels.contains_key("warn") && s.labels.contains_key("crit") && s.labels.contains_key("max"));
}
