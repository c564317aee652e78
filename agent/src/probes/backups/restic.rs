//! restic: `snapshots --json`, `stats --json --mode raw-data` and `check`, parsed.

use jiff::Timestamp;
use serde::Deserialize;

use super::{Backup, CheckOutcome, Kind};
use crate::probes::patches::exec::{Output, last_line};

#[derive(Deserialize)]
struct Snapshot {
    time: String,
    id: Option<String>,
    short_id: Option<String>,
    /// restic 0.17 and later: what the backup run saw.
    summary: Option<Summary>,
}

#[derive(Deserialize)]
struct Summary {
    total_bytes_processed: Option<u64>,
}

/// The snapshots of `restic snapshots --json` (a JSON array; `null` from old versions
/// when there are none).
pub fn parse_snapshots(json: &str) -> Result<Vec<Backup>, String> {
    let snapshots: Option<Vec<Snapshot>> =
        serde_json::from_str(json.trim()).map_err(|e| format!("unexpected output of restic snapshots --json: {e}"))?;
    snapshots
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            let time: Timestamp =
                s.time.parse().map_err(|e| format!("restic snapshot time {:?} is not a time: {e}", s.time))?;
            Ok(Backup {
                time,
                kind: Kind::Snapshot,
                id: s.short_id.or(s.id),
                size_bytes: s.summary.and_then(|m| m.total_bytes_processed),
                volumes: None,
            })
        })
        .collect()
}

/// The repository's stored size from `restic stats --json --mode raw-data`.
pub fn parse_stats(json: &str) -> Result<u64, String> {
    #[derive(Deserialize)]
    struct Stats {
        total_size: u64,
    }
    serde_json::from_str::<Stats>(json.trim())
        .map(|s| s.total_size)
        .map_err(|e| format!("unexpected output of restic stats --json: {e}"))
}

const LOCKED: &[&str] = &["repository is already locked", "unable to create lock"];

/// Lines of `restic check` that report damage (the rest is progress).
fn damage_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            !l.is_empty()
                && !lower.starts_with("fatal:")
                && !lower.contains("no errors were found")
                && (lower.contains("error") || lower.contains("does not match") || lower.contains("not found"))
        })
        .collect()
}

/// What `restic check` concluded: exit 0 is a pass; "repository contains errors" a
/// failure, quoting the first damage it names; anything else (a lock held by a running
/// backup, a wrong password) did not tell.
pub fn classify_check(out: &Output) -> CheckOutcome {
    let text = out.combined();
    if out.code == Some(0) {
        return CheckOutcome::Passed("no errors were found".to_string());
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("repository contains errors") {
        let damage = damage_lines(&text);
        let first = damage.first().copied().unwrap_or("repository contains errors");
        let more = if damage.len() > 1 { format!(" (and {} more)", damage.len() - 1) } else { String::new() };
        return CheckOutcome::Failed(format!("{first}{more}"));
    }
    if let Some(l) = text.lines().find(|l| LOCKED.iter().any(|p| l.to_ascii_lowercase().contains(p))) {
        return CheckOutcome::NotRun(format!("repository locked: {}", l.trim()));
    }
    CheckOutcome::NotRun(format!("restic check exited with {:?}: {}", out.code, last_line(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_of_restic_0_14_parse() {
        // Recorded from restic 0.14.0 (Debian 12), one snapshot backdated with --time.
        let json = r#"[{"time":"2026-01-01T10:00:00Z","tree":"a0d1","paths":["/tmp/bk/src"],"hostname":"vm","username":"root","id":"e475b6011ccffadb","short_id":"e475b601"},{"time":"2026-12-06T07:08:44.761025158+01:00","parent":"e475","tree":"a0d1","paths":["/tmp/bk/src"],"hostname":"vm","username":"root","id":"21186f05f4c1db7c","short_id":"21186f05"}]"#;
        let b = parse_snapshots(json).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].time, "2026-01-01T10:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(b[1].time, "2026-12-06T06:08:44.761025158Z".parse::<Timestamp>().unwrap());
        assert_eq!((b[1].kind, b[1].id.as_deref()), (Kind::Snapshot, Some("21186f05")));
        assert_eq!(parse_snapshots("null\n").unwrap(), vec![]);
        assert_eq!(parse_snapshots("[]").unwrap(), vec![]);
        assert!(parse_snapshots("Fatal: wrong password").unwrap_err().contains("restic snapshots --json"));
    }

    #[test]
    fn snapshot_sizes_of_newer_restic_are_taken() {
        let json =
            r#"[{"time":"2026-12-06T07:00:00Z","id":"abc","summary":{"total_bytes_processed":12345,"data_added":10}}]"#;
        assert_eq!(parse_snapshots(json).unwrap()[0].size_bytes, Some(12345));
    }

    #[test]
    fn stats_parse() {
        assert_eq!(
            parse_stats(r#"{"total_size":100667,"total_file_count":0,"total_blob_count":4,"snapshots_count":2}"#),
            Ok(100667)
        );
        assert!(parse_stats("").is_err());
    }

    fn out(code: i32, stdout: &str, stderr: &str) -> Output {
        Output { code: Some(code), stdout: stdout.into(), stderr: stderr.into() }
    }

    #[test]
    fn check_outcomes() {
        let ok = out(0, "load indexes\ncheck all packs\nno errors were found\n", "");
        assert_eq!(classify_check(&ok), CheckOutcome::Passed("no errors were found".into()));
        // Recorded: a pack with overwritten bytes, restic 0.14.
        let bad = out(
            1,
            "load indexes\ncheck all packs\nread 100.0% of data packs\n",
            "Pack ID does not match, want f529fc76, got d37939c3\nFatal: repository contains errors\n",
        );
        assert_eq!(
            classify_check(&bad),
            CheckOutcome::Failed("Pack ID does not match, want f529fc76, got d37939c3".into())
        );
        let locked = out(1, "", "unable to create lock in backend: repository is already locked by PID 4711 on vm\n");
        assert!(matches!(classify_check(&locked), CheckOutcome::NotRun(w) if w.starts_with("repository locked")));
        let pw = out(1, "", "Fatal: wrong password or no key found\n");
        assert!(matches!(classify_check(&pw), CheckOutcome::NotRun(w) if w.contains("wrong password")));
    }
}
