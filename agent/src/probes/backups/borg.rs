//! borg: `list --json`, `info --json` and `check --repository-only`, parsed.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;

use super::{Backup, CheckOutcome, Kind};
use crate::probes::patches::exec::{Output, last_line};

#[derive(Deserialize)]
struct ListOutput {
    archives: Vec<Archive>,
}

#[derive(Deserialize)]
struct Archive {
    name: Option<String>,
    start: Option<String>,
    time: Option<String>,
}

/// A borg time: with an offset (newer borg), or without one, in UTC (borg 1.2 prints
/// local times as `2026-12-06T07:09:05.000000`, and the probe runs it with `TZ=UTC`).
pub fn parse_time(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let civil: jiff::civil::DateTime = s.parse().map_err(|e| format!("borg time {s:?} is not a time: {e}"))?;
    civil.to_zoned(TimeZone::UTC).map(|z| z.timestamp()).map_err(|e| format!("borg time {s:?}: {e}"))
}

/// The archives of `borg list --json` (each one a snapshot), at their start time.
pub fn parse_list(json: &str) -> Result<Vec<Backup>, String> {
    let list: ListOutput =
        serde_json::from_str(json.trim()).map_err(|e| format!("unexpected output of borg list --json: {e}"))?;
    list.archives
        .into_iter()
        .map(|a| {
            let time = a.start.or(a.time).ok_or("borg list --json: an archive without a time")?;
            Ok(Backup { time: parse_time(&time)?, kind: Kind::Snapshot, id: a.name, size_bytes: None, volumes: None })
        })
        .collect()
}

/// The repository's stored size (deduplicated, compressed) from `borg info --json`.
pub fn parse_info(json: &str) -> Result<u64, String> {
    #[derive(Deserialize)]
    struct Info {
        cache: Cache,
    }
    #[derive(Deserialize)]
    struct Cache {
        stats: Stats,
    }
    #[derive(Deserialize)]
    struct Stats {
        unique_csize: u64,
    }
    serde_json::from_str::<Info>(json.trim())
        .map(|i| i.cache.stats.unique_csize)
        .map_err(|e| format!("unexpected output of borg info --json: {e}"))
}

const DAMAGE: &[&str] = &["integrity error", "errors found", "mismatch", "missing", "corrupt"];

/// What `borg check --repository-only` concluded: exit 0 is a pass; a report of damage
/// (checksum mismatch, "errors found") a failure quoting its first line; anything else
/// (the repository locked by a running backup) did not tell.
pub fn classify_check(out: &Output) -> CheckOutcome {
    let text = out.combined();
    if out.code == Some(0) {
        return CheckOutcome::Passed("no problems found".to_string());
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("failed to create/acquire the lock") || lower.contains("lock timeout") {
        let line = text.lines().find(|l| l.to_ascii_lowercase().contains("lock")).unwrap_or("").trim();
        return CheckOutcome::NotRun(format!("repository locked: {line}"));
    }
    let damage: Vec<&str> =
        text.lines().map(str::trim).filter(|l| DAMAGE.iter().any(|d| l.to_ascii_lowercase().contains(d))).collect();
    match damage.first() {
        Some(first) => {
            let more = if damage.len() > 1 { format!(" (and {} more)", damage.len() - 1) } else { String::new() };
            CheckOutcome::Failed(format!("{first}{more}"))
        }
        None => CheckOutcome::NotRun(format!("borg check exited with {:?}: {}", out.code, last_line(&text))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_of_borg_1_2_parses_times_without_offset_as_utc() {
        // Recorded from borg 1.2.4 (Debian 12); the first archive made with --timestamp.
        let json = r#"{"archives":[{"archive":"first","barchive":"first","id":"5ff6","name":"first","start":"2026-01-01T10:00:00.000000","time":"2026-01-01T10:00:00.000000"},{"archive":"second","barchive":"second","id":"3410","name":"second","start":"2026-12-06T07:09:05.000000","time":"2026-12-06T07:09:05.000000"}],"encryption":{"mode":"repokey"},"repository":{"id":"6f5a","last_modified":"2026-12-06T07:09:05.000000","location":"/tmp/bk/borg"}}"#;
        let b = parse_list(json).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].time, "2026-01-01T10:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!((b[1].kind, b[1].id.as_deref()), (Kind::Snapshot, Some("second")));
        assert_eq!(b[1].time, "2026-12-06T07:09:05Z".parse::<Timestamp>().unwrap());
        assert!(parse_list("{}").is_err());
    }

    #[test]
    fn times_with_an_offset_keep_it() {
        let t = parse_time("2026-12-06T07:09:05.000000+01:00").unwrap();
        assert_eq!(t, "2026-12-06T06:09:05Z".parse::<Timestamp>().unwrap());
    }

    #[test]
    fn info_gives_the_deduplicated_size() {
        let json = r#"{"cache":{"path":"/x","stats":{"total_chunks":8,"total_csize":200184,"total_size":200012,"total_unique_chunks":5,"unique_csize":101384,"unique_size":101405}},"encryption":{"mode":"repokey"}}"#;
        assert_eq!(parse_info(json), Ok(101384));
    }

    #[test]
    fn check_outcomes() {
        let ok = Output { code: Some(0), stdout: String::new(), stderr: String::new() };
        assert!(matches!(classify_check(&ok), CheckOutcome::Passed(_)));
        // Recorded: a segment with overwritten bytes, borg 1.2.4.
        let bad = Output {
            code: Some(1),
            stdout: String::new(),
            stderr: "Data integrity error: Segment entry checksum mismatch [segment 2, offset 98]\nIndex object count mismatch.\ncommitted index: 6 objects\nFinished full repository check, errors found.\n".into(),
        };
        assert_eq!(
            classify_check(&bad),
            CheckOutcome::Failed(
                "Data integrity error: Segment entry checksum mismatch [segment 2, offset 98] (and 2 more)".into()
            )
        );
        let locked = Output {
            code: Some(2),
            stdout: String::new(),
            stderr: "Failed to create/acquire the lock /srv/borg/lock.exclusive (timeout).\n".into(),
        };
        assert!(matches!(classify_check(&locked), CheckOutcome::NotRun(w) if w.starts_with("repository locked")));
    }
}
