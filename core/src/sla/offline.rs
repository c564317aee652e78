//! The offline SLA command's logic: contract TOML and outage/maintenance CSV text in, report rows out.
//!
//! `pikett-collector sla --contract FILE --outages FILE [--maintenance FILE] --month YYYY-MM`
//! reads the files and calls [`run_offline_named`]; every malformed row is reported with its line number (all of
//! them, nothing is skipped), and overlapping outages of a host name both lines.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::compute::Ledger;
use super::contract::Contract;
use super::{Cause, Maintenance, Month, Outage, ReportRow, RowError, SlaError};

const OUTAGES_HEADER: [&str; 4] = ["host", "start", "end", "cause"];
const MAINTENANCE_HEADER: [&str; 4] = ["host", "start", "end", "announced"];

/// Runs the SLA computation of `month` (`YYYY-MM`) on the texts of the files.
pub fn run_offline(
    contract_toml: &str,
    outages_csv: &str,
    maintenance_csv: Option<&str>,
    month: &str,
) -> Result<Vec<ReportRow>, SlaError> {
    run_offline_named(
        ("contract", contract_toml),
        ("outages CSV", outages_csv),
        maintenance_csv.map(|m| ("maintenance CSV", m)),
        month,
    )
}

/// [`run_offline`] with the name of each text's source (a file name), used in every error.
pub fn run_offline_named(
    contract: (&str, &str),
    outages: (&str, &str),
    maintenance: Option<(&str, &str)>,
    month: &str,
) -> Result<Vec<ReportRow>, SlaError> {
    let month: Month = month.parse()?;
    let contract_parsed = Contract::from_toml(contract.1, contract.0)?;
    let (outage_rows, lines) = parse_outages(outages.1, outages.0)?;
    check_overlaps(&outage_rows, &lines, outages.0)?;
    let maintenance_rows = match maintenance {
        Some((name, text)) => parse_maintenance(text, name)?,
        None => Vec::new(),
    };
    Ledger::new(&contract_parsed, &outage_rows, &maintenance_rows)?.month(month)
}

/// Parses `host,start,end,cause` rows; returns them with their line numbers.
pub fn parse_outages(text: &str, source_name: &str) -> Result<(Vec<Outage>, Vec<u64>), SlaError> {
    let mut out = Vec::new();
    let mut lines = Vec::new();
    parse_rows(text, source_name, &OUTAGES_HEADER, |line, f| {
        let (host, start, end) = interval_fields(f)?;
        let cause: Cause = f[3].parse()?;
        out.push(Outage { host, start, end, cause });
        lines.push(line);
        Ok(())
    })?;
    Ok((out, lines))
}

/// Parses `host,start,end,announced` rows.
pub fn parse_maintenance(text: &str, source_name: &str) -> Result<Vec<Maintenance>, SlaError> {
    let mut out = Vec::new();
    parse_rows(text, source_name, &MAINTENANCE_HEADER, |_, f| {
        let (host, start, end) = interval_fields(f)?;
        let announced = time_field("announced", f[3])?;
        out.push(Maintenance { host, start, end, announced });
        Ok(())
    })?;
    Ok(out)
}

fn time_field(name: &str, value: &str) -> Result<Timestamp, String> {
    value.parse().map_err(|e| format!("{name} {value:?} is not an RFC 3339 time like 2026-03-01T10:00:00Z: {e}"))
}

fn interval_fields(f: &[&str]) -> Result<(String, Timestamp, Timestamp), String> {
    if f[0].is_empty() {
        return Err("host is empty".into());
    }
    let start = time_field("start", f[1])?;
    let end = time_field("end", f[2])?;
    if end <= start {
        return Err(format!("end {} is not after start {}", f[2], f[1]));
    }
    Ok((f[0].to_string(), start, end))
}

/// Reads CSV with exactly `header`, calling `row(line, fields)` per data row; collects every
/// row's error with its line number.
fn parse_rows(
    text: &str,
    source_name: &str,
    header: &[&str],
    mut row: impl FnMut(u64, &[&str]) -> Result<(), String>,
) -> Result<(), SlaError> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let mut errors = Vec::new();
    let mut saw_header = false;
    let mut record = csv::StringRecord::new();
    // The csv crate's own line count ignores blank lines; count newlines before the record's
    // byte offset instead (incrementally, records come in order).
    let (mut seen_byte, mut seen_line) = (0usize, 1u64);
    let mut line_at = |pos: Option<&csv::Position>, fallback: u64| -> u64 {
        let Some(byte) = pos.map(|p| p.byte() as usize) else {
            return fallback;
        };
        // The position is where reading began, before any skipped blank lines.
        let mut byte = byte.min(text.len());
        while matches!(text.as_bytes().get(byte), Some(b'\n' | b'\r')) {
            byte += 1;
        }
        if byte >= seen_byte {
            seen_line += text.as_bytes()[seen_byte..byte].iter().filter(|&&b| b == b'\n').count() as u64;
            seen_byte = byte;
        }
        seen_line
    };
    loop {
        let line_hint = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = line_at(record.position(), line_hint);
                let fields: Vec<&str> = record.iter().collect();
                if !saw_header {
                    saw_header = true;
                    let matches = fields.len() == header.len()
                        && fields.iter().zip(header).all(|(a, b)| a.eq_ignore_ascii_case(b));
                    if !matches {
                        errors.push(RowError {
                            line,
                            message: format!(
                                "expected the header {:?}, found {:?}",
                                header.join(","),
                                fields.join(",")
                            ),
                        });
                        break;
                    }
                    continue;
                }
                let result = if fields.len() != header.len() {
                    Err(format!("expected {} fields ({}), found {}", header.len(), header.join(","), fields.len()))
                } else {
                    row(line, &fields)
                };
                if let Err(message) = result {
                    errors.push(RowError { line, message });
                }
            }
            Err(e) => {
                let line = line_at(e.position(), line_hint);
                errors.push(RowError { line, message: format!("unreadable CSV: {e}") });
                if !matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) {
                    break;
                }
            }
        }
    }
    if !saw_header && errors.is_empty() {
        errors.push(RowError { line: 1, message: format!("empty file: expected the header {:?}", header.join(",")) });
    }
    if errors.is_empty() { Ok(()) } else { Err(SlaError::Csv { source_name: source_name.to_string(), errors }) }
}

/// Rejects overlapping outages of one host, naming both lines.
fn check_overlaps(outages: &[Outage], lines: &[u64], source_name: &str) -> Result<(), SlaError> {
    let mut by_host: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, o) in outages.iter().enumerate() {
        by_host.entry(&o.host).or_default().push(i);
    }
    for (host, mut idx) in by_host {
        idx.sort_by_key(|&i| (outages[i].start, lines[i]));
        for pair in idx.windows(2) {
            let (a, b) = (&outages[pair[0]], &outages[pair[1]]);
            if b.start < a.end {
                let (l1, l2) = (lines[pair[0]], lines[pair[1]]);
                return Err(SlaError::OverlappingRows {
                    source_name: source_name.to_string(),
                    host: host.to_string(),
                    first_line: l1.min(l2),
                    second_line: l1.max(l2),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_with_line_numbers() {
        let text = "host,start,end,cause\nweb1,2026-03-02T10:00:00Z,2026-03-02T10:03:00Z,\n\nweb1,2026-03-03T10:00:00+01:00,2026-03-03T11:00:00+01:00,force-majeure\n";
        let (rows, lines) = parse_outages(text, "o.csv").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(lines, vec![2, 4]);
        assert_eq!(rows[1].cause, Cause::ForceMajeure);
        assert_eq!(rows[1].start.to_string(), "2026-03-03T09:00:00Z");
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line() {
        let text = "host,start,end,cause\n\
                    web1,2026-03-02T10:00:00Z,2026-03-02T10:03:00Z,\n\
                    web1,yesterday,2026-03-02T10:03:00Z,\n\
                    web1,2026-03-02T11:00:00Z,2026-03-02T10:03:00Z,\n\
                    web1,2026-03-02T12:00:00Z,2026-03-02T12:03:00Z,act-of-god\n\
                    web1,2026-03-02T13:00:00Z\n\
                    ,2026-03-02T14:00:00Z,2026-03-02T14:03:00Z,\n";
        let err = parse_outages(text, "o.csv").unwrap_err();
        let SlaError::Csv { source_name, errors } = &err else { panic!("{err}") };
        assert_eq!(source_name, "o.csv");
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7], "{err}");
        let msg = err.to_string();
        for needle in ["yesterday", "not after start", "act-of-god", "expected 4 fields", "host is empty"] {
            assert!(msg.contains(needle), "{msg} lacks {needle}");
        }
    }

    #[test]
    fn wrong_header_and_empty_file_are_errors() {
        let err = parse_outages("host,begin,end,cause\n", "o.csv").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("host,start,end,cause"), "{err}");
        let err = parse_outages("", "o.csv").unwrap_err().to_string();
        assert!(err.contains("empty file"), "{err}");
        let err = parse_maintenance("host,start,end,cause\n", "m.csv").unwrap_err().to_string();
        assert!(err.contains("m.csv") && err.contains("announced"), "{err}");
    }

    #[test]
    fn overlap_names_both_lines() {
        let text = "host,start,end,cause\n\
                    web1,2026-03-02T10:00:00Z,2026-03-02T11:00:00Z,\n\
                    web2,2026-03-02T10:30:00Z,2026-03-02T10:40:00Z,\n\
                    web1,2026-03-02T12:00:00Z,2026-03-02T12:10:00Z,\n\
                    web1,2026-03-02T10:59:59Z,2026-03-02T11:10:00Z,\n";
        let (rows, lines) = parse_outages(text, "o.csv").unwrap();
        let err = check_overlaps(&rows, &lines, "o.csv").unwrap_err();
        assert!(
            matches!(&err, SlaError::OverlappingRows { first_line: 2, second_line: 5, host, .. } if host == "web1"),
            "{err}"
        );
        assert!(err.to_string().contains("line 2 and line 5"), "{err}");
    }
}
