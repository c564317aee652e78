//! `tool = "command"`: any program that prints its backups as JSON on stdout.
//!
//! ```json
//! {
//!   "backups": [
//!     {"time": "2026-12-05T02:00:00Z", "kind": "full", "size_bytes": 52428800, "id": "set-41"},
//!     {"time": "2026-12-06T02:00:00+01:00", "kind": "incremental"}
//!   ],
//!   "repository_size_bytes": 73400320,
//!   "integrity": {"ok": true, "summary": "all volumes verified", "time": "2026-12-06T03:00:00Z"}
//! }
//! ```
//!
//! `backups` is required (may be empty); `time` (RFC 3339 with an offset) and `kind`
//! (`full`, `incremental` or `snapshot`) are required per backup; everything else is
//! optional, and unknown keys are ignored so that a program may print more. The program
//! exits 0; any other exit is UNKNOWN with its last line of output.

use jiff::Timestamp;
use serde::Deserialize;

use super::{Backup, Kind, Listing};

#[derive(Deserialize)]
struct Printed {
    backups: Vec<PrintedBackup>,
    repository_size_bytes: Option<u64>,
    integrity: Option<PrintedIntegrity>,
}

#[derive(Deserialize)]
struct PrintedBackup {
    time: Timestamp,
    kind: Kind,
    size_bytes: Option<u64>,
    id: Option<String>,
}

#[derive(Deserialize)]
struct PrintedIntegrity {
    ok: bool,
    #[serde(default)]
    summary: String,
    time: Option<Timestamp>,
}

/// The listing a program printed. Any snapshot makes it a snapshot listing (the policy
/// then counts snapshots); otherwise fulls and incrementals form chains.
pub fn parse(json: &str) -> Result<Listing, String> {
    let printed: Printed =
        serde_json::from_str(json.trim()).map_err(|e| format!("the command's output is not the backups JSON: {e}"))?;
    let backups: Vec<Backup> = printed
        .backups
        .into_iter()
        .map(|b| Backup { time: b.time, kind: b.kind, id: b.id, size_bytes: b.size_bytes, volumes: None })
        .collect();
    let snapshots = backups.iter().any(|b| b.kind == Kind::Snapshot);
    let integrity = printed.integrity.map(|i| {
        let summary = if i.summary.is_empty() {
            if i.ok { "passed".to_string() } else { "failed".to_string() }
        } else {
            i.summary
        };
        (i.time, i.ok, summary)
    });
    Ok(Listing {
        backups,
        repository_size_bytes: printed.repository_size_bytes,
        integrity,
        snapshots,
        ..Listing::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let json = r#"{
          "backups": [
            {"time": "2026-12-05T02:00:00Z", "kind": "full", "size_bytes": 52428800, "id": "set-41"},
            {"time": "2026-12-06T02:00:00+01:00", "kind": "incremental", "extra": 1}
          ],
          "repository_size_bytes": 73400320,
          "integrity": {"ok": true, "summary": "all volumes verified", "time": "2026-12-06T03:00:00Z"}
        }"#;
        let l = parse(json).unwrap();
        assert_eq!(l.backups.len(), 2);
        assert_eq!(l.backups[1].time, "2026-12-06T01:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!((l.backups[0].kind, l.backups[0].size_bytes), (Kind::Full, Some(52428800)));
        assert_eq!(l.repository_size_bytes, Some(73400320));
        assert!(!l.snapshots);
        let (time, ok, summary) = l.integrity.unwrap();
        assert_eq!((time.is_some(), ok, summary.as_str()), (true, true, "all volumes verified"));
    }

    #[test]
    fn minimal_and_wrong_outputs() {
        let l = parse(r#"{"backups":[{"time":"2026-12-06T02:00:00Z","kind":"snapshot"}]}"#).unwrap();
        assert!(l.snapshots && l.integrity.is_none() && l.repository_size_bytes.is_none());
        assert!(parse(r#"{"backups":[{"time":"2026-12-06T02:00:00","kind":"full"}]}"#).is_err(), "no offset");
        assert!(parse(r#"{"backups":[{"time":"2026-12-06T02:00:00Z","kind":"differential"}]}"#).is_err());
        let e = parse("backup list:\n").unwrap_err();
        assert!(e.starts_with("the command's output is not the backups JSON"), "{e}");
    }
}
