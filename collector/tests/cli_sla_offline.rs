//! `pikett-collector sla` on files: the SLA report's JSON lines (docs/cli.md, `sla report`),
//! and malformed rows reported with their line numbers (exit 2).

use std::process::Command;

fn testdata(name: &str) -> String {
    format!("{}/testdata/sla/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn offline_report_prints_one_json_object_per_host_and_window() {
    let out = Command::new(env!("CARGO_BIN_EXE_pikett-collector"))
        .args(["sla", "--contract", &testdata("contract.toml"), "--outages", &testdata("outages.csv")])
        .args(["--maintenance", &testdata("maintenance.csv"), "--month", "2026-03", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4, "2 hosts x 2 windows");
    for r in &rows {
        for key in [
            "host",
            "month",
            "window",
            "window_seconds",
            "outage_seconds",
            "counted_seconds",
            "availability",
            "target",
            "met",
        ] {
            assert!(!r[key].is_null(), "{key} missing in {r}");
        }
        for reason in ["short", "maintenance", "force_majeure", "customer"] {
            assert!(r["excused_seconds"][reason].is_u64(), "{reason} missing in {r}");
        }
        let excused: u64 = r["excused_seconds"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(r["counted_seconds"].as_u64().unwrap() + excused, r["outage_seconds"].as_u64().unwrap());
        // March 2026 in Europe/Berlin has 31 days, one of them 23 h long (DST starts on the 29th).
        let window = r["window_seconds"].as_u64().unwrap();
        if r["window"] == "core" {
            assert_eq!(window, 31 * 11 * 3600);
        } else {
            assert_eq!(window, 31 * 13 * 3600 - 3600);
        }
    }
}

#[test]
fn malformed_rows_are_reported_with_line_numbers() {
    let out = Command::new(env!("CARGO_BIN_EXE_pikett-collector"))
        .args(["sla", "--contract", &testdata("contract.toml"), "--outages", &testdata("bad_outages.csv")])
        .args(["--month", "2026-03"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad_outages.csv") && err.contains("line 3") && err.contains("line 5"), "{err}");
}
