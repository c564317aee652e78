//! Renders SLA report rows for people (aligned table) and scripts (JSON lines, CSV).

use super::ReportRow;
use super::compute::YearRow;

fn minutes(seconds: u64) -> String {
    format!("{:.1}", seconds as f64 / 60.0)
}

fn percent(fraction: f64, decimals: usize) -> String {
    format!("{:.*}%", decimals, fraction * 100.0)
}

/// A target as a short percentage: 0.98 → `98%`, 0.9995 → `99.95%`.
fn target(fraction: f64) -> String {
    let s = format!("{:.6}", fraction * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn table(header: &[&str], rows: &[Vec<String>], right_from: usize) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(&width)
            .enumerate()
            .map(|(i, (c, &w))| if i >= right_from { format!("{c:>w$}") } else { format!("{c:<w$}") })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The plain-text report: minutes per window, counted and excused outage minutes by reason,
/// availability to 3 decimals, the target, and `met` or `BREACHED`.
pub fn render_table(rows: &[ReportRow]) -> String {
    let header = [
        "HOST",
        "MONTH",
        "WINDOW",
        "WINDOW_MIN",
        "OUTAGE_MIN",
        "COUNTED_MIN",
        "SHORT_MIN",
        "MAINT_MIN",
        "FORCE_MAJ_MIN",
        "CUSTOMER_MIN",
        "AVAILABILITY",
        "TARGET",
        "RESULT",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.host.clone(),
                r.month.clone(),
                r.window.clone(),
                minutes(r.window_seconds),
                minutes(r.outage_seconds),
                minutes(r.counted_seconds),
                minutes(r.excused_seconds.short),
                minutes(r.excused_seconds.maintenance),
                minutes(r.excused_seconds.force_majeure),
                minutes(r.excused_seconds.customer),
                percent(r.availability, 3),
                target(r.target),
                if r.met { "met".into() } else { "BREACHED".into() },
            ]
        })
        .collect();
    table(&header, &cells, 3)
}

/// One JSON object per line (`--output json`; the SLA report's JSON lines in docs/cli.md).
pub fn render_json_lines(rows: &[ReportRow]) -> String {
    let mut out = String::new();
    for r in rows {
        // Serializing plain numbers, strings and bools cannot fail.
        out.push_str(&serde_json::to_string(r).expect("report row serializes"));
        out.push('\n');
    }
    out
}

/// CSV with a header; the excused seconds are flattened to `excused_<reason>_seconds`.
pub fn render_csv(rows: &[ReportRow]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "host",
        "month",
        "window",
        "window_seconds",
        "outage_seconds",
        "counted_seconds",
        "excused_short_seconds",
        "excused_maintenance_seconds",
        "excused_force_majeure_seconds",
        "excused_customer_seconds",
        "availability",
        "target",
        "met",
    ];
    // Writing to a Vec cannot fail.
    w.write_record(header).expect("write to memory");
    for r in rows {
        w.write_record([
            r.host.clone(),
            r.month.clone(),
            r.window.clone(),
            r.window_seconds.to_string(),
            r.outage_seconds.to_string(),
            r.counted_seconds.to_string(),
            r.excused_seconds.short.to_string(),
            r.excused_seconds.maintenance.to_string(),
            r.excused_seconds.force_majeure.to_string(),
            r.excused_seconds.customer.to_string(),
            r.availability.to_string(),
            r.target.to_string(),
            r.met.to_string(),
        ])
        .expect("write to memory");
    }
    let bytes = w.into_inner().expect("flush to memory");
    String::from_utf8(bytes).expect("CSV of UTF-8 strings is UTF-8")
}

/// The year view: one line per host and window, each month's availability (3 decimals,
/// `!` after a breached month).
pub fn render_year_table(rows: &[YearRow]) -> String {
    let months: Vec<String> =
        rows.first().map_or_else(Vec::new, |r| r.months.iter().map(|m| m.month.clone()).collect());
    let mut header: Vec<&str> = vec!["HOST", "WINDOW", "TARGET"];
    header.extend(months.iter().map(String::as_str));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![r.host.clone(), r.window.clone(), target(r.target)];
            for m in &months {
                c.push(match r.months.iter().find(|x| &x.month == m) {
                    Some(x) => format!("{}{}", percent(x.availability, 3), if x.met { " " } else { "!" }),
                    None => "-".into(),
                });
            }
            c
        })
        .collect();
    table(&header, &cells, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sla::ExcusedSeconds;

    fn row(counted: u64, met: bool) -> ReportRow {
        ReportRow {
            host: "web1".into(),
            month: "2026-03".into(),
            window: "core".into(),
            window_seconds: 1_227_600,
            outage_seconds: counted + 240,
            counted_seconds: counted,
            excused_seconds: ExcusedSeconds { short: 240, ..Default::default() },
            availability: (1_227_600 - counted) as f64 / 1_227_600.0,
            target: 0.98,
            met,
        }
    }

    #[test]
    fn table_shows_minutes_percent_and_result() {
        let t = render_table(&[row(1200, true), row(30_000, false)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("HOST"));
        // 1_227_600 s = 20460.0 min; (1_227_600-1200)/1_227_600 = 99.902%.
        assert!(lines[1].contains("20460.0") && lines[1].contains("99.902%"), "{t}");
        assert!(lines[1].contains("98%") && lines[1].ends_with("met"), "{t}");
        assert!(lines[2].ends_with("BREACHED") && lines[2].contains("97.556%"), "{t}");
    }

    #[test]
    fn json_has_exactly_the_spec_fields() {
        let j = render_json_lines(&[row(60, true)]);
        let v: serde_json::Value = serde_json::from_str(j.trim()).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        let mut expected = vec![
            "host",
            "month",
            "window",
            "window_seconds",
            "outage_seconds",
            "counted_seconds",
            "excused_seconds",
            "availability",
            "target",
            "met",
        ];
        expected.sort();
        let mut keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(keys, expected);
        let ex: Vec<&String> = v["excused_seconds"].as_object().unwrap().keys().collect();
        assert_eq!(ex.len(), 4);
        assert_eq!(v["excused_seconds"]["short"], 240);
        assert_eq!(v["target"], 0.98);
    }

    #[test]
    fn csv_quotes_and_has_header() {
        let mut r = row(60, true);
        r.host = "web,1".into();
        let c = render_csv(&[r]);
        let mut lines = c.lines();
        assert!(lines.next().unwrap().starts_with("host,month,window,window_seconds"));
        assert!(lines.next().unwrap().starts_with("\"web,1\",2026-03,core,1227600,300,60,240,0,0,0,"));
    }
}
