//! Opening the spool must not cost the agent's memory budget (< 10 MiB RSS, BENCHMARKS.md).
//! sled builds 41 metric histograms of 512 KiB on first use; unless they come from a zeroed
//! allocation (the workspace enables sled's `miri_optimizations` for that), filling them touches
//! 20.5 MiB. Its own test binary, so sled is first used here.

use pikett_agent::spool::Spool;

fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("RssAnon in /proc/self/status")
}

#[test]
fn opening_the_spool_touches_no_more_than_a_few_mib() {
    let dir = tempfile::tempdir().unwrap();
    let before = rss_anon_kib();
    let spool = Spool::open(dir.path(), 256 << 20, 2 << 20).expect("opening the spool");
    let after = rss_anon_kib();
    drop(spool);
    let grown = after.saturating_sub(before);
    assert!(grown < 8 * 1024, "opening the spool grew anonymous memory by {grown} KiB");
}
