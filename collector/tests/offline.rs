//! The offline SLA command's logic on the files in testdata/ (figures worked out by hand).

use std::path::{Path, PathBuf};

use pikett_collector::offline_sla::run_offline_files;
use pikett_core::sla::{ReportRow, SlaError, render_csv, render_json_lines, render_table, run_offline};

fn data(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/sla")).join(name)
}

fn row<'a>(rows: &'a [ReportRow], host: &str, window: &str) -> &'a ReportRow {
    rows.iter().find(|r| r.host == host && r.window == window).unwrap()
}

fn march() -> Vec<ReportRow> {
    run_offline_files(&data("contract.toml"), &data("outages.csv"), Some(&data("maintenance.csv")), "2026-03").unwrap()
}

#[test]
fn march_report_from_files() {
    let rows = march();
    // Hosts sorted, windows in contract order.
    let keys: Vec<(&str, &str)> = rows.iter().map(|r| (r.host.as_str(), r.window.as_str())).collect();
    assert_eq!(keys, [("db1", "core"), ("db1", "off"), ("web1", "core"), ("web1", "off")]);

    // web1 core: 17:50–07:10 gives 600 + 600 = 1,200 s counted; 4 March: 3 + 4 min short
    // (420 s), the third (2 min) counts: 120 s; 19 March 12:00–15:00 CET force majeure 10,800 s.
    let r = row(&rows, "web1", "core");
    assert_eq!(r.window_seconds, 1_227_600);
    assert_eq!(r.outage_seconds, 1_200 + 540 + 10_800);
    assert_eq!(r.counted_seconds, 1_320);
    assert_eq!(r.excused_seconds.short, 420);
    assert_eq!(r.excused_seconds.force_majeure, 10_800);
    assert_eq!(r.availability, (1_227_600.0 - 1_320.0) / 1_227_600.0);
    // web1 off: 18:00–07:00 = 46,800 s counted.
    assert_eq!(row(&rows, "web1", "off").counted_seconds, 46_800);
    // db1: 21 March 06:30–09:30 in maintenance announced 8 days ahead: off 1,800 s excused,
    // core 9,000 s of which the 2 h cap excuses 7,200, 1,800 count. 14 March 22:10–23:10 in
    // maintenance announced only 6 days ahead: 3,600 s off counted. The April row is ignored.
    let r = row(&rows, "db1", "core");
    assert_eq!((r.outage_seconds, r.excused_seconds.maintenance, r.counted_seconds), (9_000, 7_200, 1_800));
    let r = row(&rows, "db1", "off");
    assert_eq!((r.outage_seconds, r.excused_seconds.maintenance, r.counted_seconds), (5_400, 1_800, 3_600));
    assert_eq!(r.excused_seconds.customer, 0);
}

#[test]
fn json_lines_carry_the_spec_fields() {
    let out = render_json_lines(&march());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["host"], "db1");
    assert_eq!(v["month"], "2026-03");
    assert_eq!(v["window"], "core");
    assert_eq!(v["window_seconds"], 1_227_600);
    assert_eq!(v["outage_seconds"], 9_000);
    assert_eq!(v["counted_seconds"], 1_800);
    assert_eq!(v["excused_seconds"]["maintenance"], 7_200);
    assert_eq!(v["excused_seconds"]["force_majeure"], 0);
    assert_eq!(v["target"], 0.98);
    assert_eq!(v["met"], true);
    assert_eq!(v["availability"].as_f64().unwrap(), 1_225_800.0 / 1_227_600.0);
}

#[test]
fn table_and_csv_render_the_report() {
    let rows = march();
    let table = render_table(&rows);
    // web1 core: (1,227,600 − 1,320) / 1,227,600 = 99.892 %; 1,320 s = 22.0 min.
    let web1 = table.lines().find(|l| l.starts_with("web1") && l.contains("core")).unwrap();
    assert!(web1.contains("99.892%") && web1.contains("22.0") && web1.contains("180.0"), "{table}");
    assert!(web1.ends_with("met"), "{table}");
    let csv = render_csv(&rows);
    assert_eq!(csv.lines().count(), 5);
    assert!(csv.lines().nth(1).unwrap().starts_with("db1,2026-03,core,1227600,9000,1800,0,7200,0,0,"));
}

#[test]
fn without_maintenance_file_nothing_is_excused_as_maintenance() {
    let contract = std::fs::read_to_string(data("contract.toml")).unwrap();
    let outages = std::fs::read_to_string(data("outages.csv")).unwrap();
    let rows = run_offline(&contract, &outages, None, "2026-03").unwrap();
    let r = row(&rows, "db1", "core");
    assert_eq!((r.counted_seconds, r.excused_seconds.maintenance), (9_000, 0));
    // April: the customer-caused hour is excused; db1 and web1 both reported.
    let april = run_offline(&contract, &outages, None, "2026-04").unwrap();
    assert_eq!(april.len(), 4);
    assert_eq!(row(&april, "db1", "core").excused_seconds.customer, 3_600);
}

#[test]
fn malformed_rows_are_reported_with_file_and_line() {
    let path = data("bad_outages.csv");
    let err = run_offline_files(&data("contract.toml"), &path, None, "2026-03").unwrap_err();
    let SlaError::Csv { errors, .. } = &err else { panic!("{err}") };
    let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![3, 5, 6]);
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("line 3: start \"2026-03-04 12:00\""), "{msg}");
    assert!(msg.contains("line 5: unknown cause \"planned\""), "{msg}");
    assert!(msg.contains("line 6: expected 4 fields"), "{msg}");
}

#[test]
fn overlapping_rows_name_both_lines() {
    let path = data("overlapping_outages.csv");
    let err = run_offline_files(&data("contract.toml"), &path, None, "2026-03").unwrap_err();
    assert!(matches!(err, SlaError::OverlappingRows { first_line: 2, second_line: 5, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("overlapping_outages.csv") && msg.contains("\"web1\""), "{msg}");
    assert!(msg.contains("line 2 and line 5"), "{msg}");
}

#[test]
fn file_and_argument_errors_name_the_culprit() {
    let missing = data("no-such-file.csv");
    let err = run_offline_files(&data("contract.toml"), &missing, None, "2026-03").unwrap_err();
    assert!(err.to_string().contains("no-such-file.csv"), "{err}");
    let err = run_offline_files(&data("contract.toml"), &data("outages.csv"), None, "2026-3").unwrap_err();
    assert!(err.to_string().contains("2026-3") && err.to_string().contains("YYYY-MM"), "{err}");
    // A contract with a typo: the error names the contract file and the key.
    let dir = tempfile::tempdir().unwrap();
    let contract = dir.path().join("typo.toml");
    let text = std::fs::read_to_string(data("contract.toml")).unwrap().replace("short_outage =", "short_outag =");
    std::fs::write(&contract, text).unwrap();
    let err = run_offline_files(&contract, &data("outages.csv"), None, "2026-03").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("typo.toml") && msg.contains("short_outag"), "{msg}");
}
