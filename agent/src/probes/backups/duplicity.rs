//! duplicity: the chains of `collection-status`, and `verify`, parsed.
//!
//! `collection-status --log-fd 1` prints, besides its table for people, a record for
//! programs (`INFO 3`) with UTC times: one block per chain (`chain-complete` for the
//! primary chain with matching signatures, `chain-no-sig N` for the others), a line per
//! backup set (`full 20261206T070915Z 1 enc`: kind, time, volumes found, encryption), and
//! the counts of orphaned and incomplete sets. That record is what is read here; the
//! table's times are local and without a zone.

use jiff::Timestamp;
use jiff::civil::DateTime;

use super::{Backup, ChainProblem, CheckOutcome, Kind, Listing};
use crate::observation::State;
use crate::probes::patches::exec::{Output, last_line};

/// A chain as collection-status lists it.
#[derive(Debug, Clone, PartialEq)]
struct Chain {
    /// The primary chain: its signatures match (`chain-complete`).
    complete: bool,
    sets: Vec<Backup>,
}

/// `20261206T070915Z` → the instant.
fn parse_time(s: &str) -> Result<Timestamp, String> {
    let civil = DateTime::strptime("%Y%m%dT%H%M%SZ", s).map_err(|e| format!("duplicity time {s:?}: {e}"))?;
    civil.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).map_err(|e| format!("duplicity time {s:?}: {e}"))
}

/// The listing of `duplicity collection-status --log-fd 1`: every set of every chain,
/// and the chain's problems:
///
/// - a set without volumes in the current chain (its volume files are missing): CRITICAL,
///   nothing after it in the chain can be restored; in an older chain: WARNING;
/// - no chain whose signatures match (the newest chain's signatures are missing): WARNING;
/// - orphaned sets (a set whose manifest or chain is missing): WARNING.
///
/// Incomplete sets (an interrupted or running backup) are counted in
/// [`Listing::incomplete_sets`]; the probe judges them over two polls.
pub fn parse_collection_status(text: &str) -> Result<Listing, String> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("INFO 3"));
    if lines.next().is_none() {
        return Err(format!("no collection status in duplicity's output: {}", last_line(text)));
    }
    let mut chains: Vec<Chain> = Vec::new();
    let (mut orphaned, mut incomplete) = (0u64, 0u64);
    for line in lines.take_while(|l| !l.is_empty() && !l.starts_with(". ") && *l != ".") {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["chain-complete"] => chains.push(Chain { complete: true, sets: Vec::new() }),
            ["chain-no-sig", _] => chains.push(Chain { complete: false, sets: Vec::new() }),
            [kind @ ("full" | "inc"), time, volumes, ..] => {
                let chain =
                    chains.last_mut().ok_or_else(|| format!("duplicity: a backup set outside a chain: {line}"))?;
                let volumes: u64 = volumes.parse().map_err(|_| format!("duplicity: bad volume count in {line:?}"))?;
                chain.sets.push(Backup {
                    time: parse_time(time)?,
                    kind: if *kind == "full" { Kind::Full } else { Kind::Incremental },
                    id: Some((*time).to_string()),
                    size_bytes: None,
                    volumes: Some(volumes),
                });
            }
            ["orphaned-sets-num", n] => orphaned = n.parse().unwrap_or(0),
            ["incomplete-sets-num", n] => incomplete = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    // The current chain: the primary one, else the newest (its signatures are missing).
    let chain_start = |c: &Chain| c.sets.iter().map(|s| s.time).min();
    let current =
        chains.iter().position(|c| c.complete).or_else(|| (0..chains.len()).max_by_key(|&i| chain_start(&chains[i])));
    let mut problems = Vec::new();
    if !chains.is_empty() && !chains.iter().any(|c| c.complete) {
        problems.push(ChainProblem {
            state: State::Warning,
            problem:
                "no backup chain has matching signatures (signature files missing): duplicity cannot continue the chain"
                    .to_string(),
        });
    }
    for (i, chain) in chains.iter().enumerate() {
        for set in chain.sets.iter().filter(|s| s.volumes == Some(0)) {
            let (state, consequence) = if Some(i) == current {
                (State::Critical, "the current chain cannot be restored from there on")
            } else {
                (State::Warning, "an older chain cannot be restored from there on")
            };
            problems.push(ChainProblem {
                state,
                problem: format!(
                    "{} backup of {:.0} has no volumes (its files are missing): {consequence}",
                    set.kind.as_str(),
                    set.time
                ),
            });
        }
    }
    if orphaned > 0 {
        problems.push(ChainProblem {
            state: State::Warning,
            problem: format!(
                "{orphaned} backup sets belong to no chain (orphaned: a manifest or an earlier set is missing)"
            ),
        });
    }
    let backups = chains.into_iter().flat_map(|c| c.sets).collect();
    Ok(Listing { backups, problems, snapshots: false, incomplete_sets: incomplete, ..Listing::default() })
}

/// What `duplicity verify` concluded: "Verify complete" means every volume read back with
/// its manifest's hash (differences against the empty directory it compares with do not
/// matter); a hash mismatch is a failure; anything else did not tell.
pub fn classify_verify(out: &Output) -> CheckOutcome {
    let text = out.combined();
    if let Some(line) = text.lines().find(|l| l.contains("Verify complete")) {
        return CheckOutcome::Passed(format!("every volume read back with its manifest's hash ({})", line.trim()));
    }
    if let Some(pos) = text.lines().position(|l| l.to_ascii_lowercase().contains("hash mismatch")) {
        let mut lines = text.lines().skip(pos).map(str::trim);
        let first = lines.next().unwrap_or("");
        let file = lines.next().unwrap_or("");
        return CheckOutcome::Failed(format!("{first} {file}").trim().to_string());
    }
    CheckOutcome::NotRun(format!("duplicity verify exited with {:?}: {}", out.code, last_line(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from duplicity 0.8.22 (Debian 12): a full and two incrementals.
    const HEALTHY: &str = "Last full backup date: Sun Dec  6 07:09:15 2026\nNOTICE 1\n. Last full backup date: Sun Dec  6 07:09:15 2026\n\nCollection Status\n-----------------\n Type of backup set:                            Time:      Num volumes:\n                Full         Sun Dec  6 07:09:15 2026                 1\nINFO 3 \nbackend BackendWrapper\narchive-dir (. dir)\nchain-complete\n full 20261206T070915Z 1 enc\n inc 20261206T070917Z 1 enc\n inc 20261206T070919Z 1 enc\norphaned-sets-num 0\nincomplete-sets-num 0\n. Collection Status\n. -----------------\n";

    #[test]
    fn a_healthy_chain() {
        let l = parse_collection_status(HEALTHY).unwrap();
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        let kinds: Vec<Kind> = l.backups.iter().map(|b| b.kind).collect();
        assert_eq!(kinds, [Kind::Full, Kind::Incremental, Kind::Incremental]);
        assert_eq!(l.backups[2].time, "2026-12-06T07:09:19Z".parse::<Timestamp>().unwrap());
        assert_eq!(l.backups[0].volumes, Some(1));
        assert!(!l.snapshots);
    }

    #[test]
    fn a_deleted_incremental_volume_is_critical() {
        let text = HEALTHY.replace(" inc 20261206T070917Z 1 enc", " inc 20261206T070917Z 0 enc");
        let l = parse_collection_status(&text).unwrap();
        assert_eq!(l.problems.len(), 1);
        assert_eq!(l.problems[0].state, State::Critical);
        assert_eq!(
            l.problems[0].problem,
            "incremental backup of 2026-12-06T07:09:17Z has no volumes (its files are missing): the current chain cannot be restored from there on"
        );
    }

    #[test]
    fn a_chain_without_signatures_and_orphans_warn() {
        // Recorded: the first incremental's manifest and volume deleted.
        let text = "INFO 3 \nbackend BackendWrapper\narchive-dir (. dir)\nchain-no-sig 0\n full 20261206T070915Z 1 enc\norphaned-sets-num 1\nincomplete-sets-num 0\n. Collection Status\n";
        let l = parse_collection_status(text).unwrap();
        assert_eq!(l.backups.len(), 1);
        let states: Vec<State> = l.problems.iter().map(|p| p.state).collect();
        assert_eq!(states, [State::Warning, State::Warning]);
        assert!(l.problems[1].problem.starts_with("1 backup sets belong to no chain"), "{:?}", l.problems);
    }

    #[test]
    fn incomplete_sets_are_counted_not_judged() {
        let text = HEALTHY.replace("incomplete-sets-num 0", "incomplete-sets-num 2");
        let l = parse_collection_status(&text).unwrap();
        assert_eq!(l.incomplete_sets, 2);
        assert!(l.problems.is_empty(), "a running backup is no problem at first sight: {:?}", l.problems);
    }

    #[test]
    fn an_empty_target_has_no_backups_and_garbage_is_an_error() {
        let l = parse_collection_status("INFO 3 \nbackend X\norphaned-sets-num 0\nincomplete-sets-num 0\n").unwrap();
        assert!(l.backups.is_empty() && l.problems.is_empty());
        let e = parse_collection_status("Traceback...\nBackendException: No such host\n").unwrap_err();
        assert!(e.contains("BackendException: No such host"), "{e}");
    }

    #[test]
    fn verify_outcomes() {
        let out = |code, text: &str| Output { code: Some(code), stdout: text.into(), stderr: String::new() };
        let ok = out(
            0,
            "Last full backup date: Sun Dec  6 07:09:15 2026\nVerify complete: 3 files compared, 0 differences found.\n",
        );
        assert!(matches!(classify_verify(&ok), CheckOutcome::Passed(s) if s.contains("3 files compared")));
        // Recorded: bytes overwritten in the full backup's volume.
        let bad = out(
            21,
            "Invalid data - SHA1 hash mismatch for file:\n duplicity-full.20261206T070915Z.vol1.difftar.gpg\n Calculated hash: f913\n Manifest hash: 378a\n",
        );
        assert_eq!(
            classify_verify(&bad),
            CheckOutcome::Failed(
                "Invalid data - SHA1 hash mismatch for file: duplicity-full.20261206T070915Z.vol1.difftar.gpg".into()
            )
        );
        assert!(matches!(classify_verify(&out(30, "KeyError: 1\n")), CheckOutcome::NotRun(_)));
    }
}
