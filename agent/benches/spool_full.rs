//! The spool at its cap: 100 appends to a full 64 MiB spool against 100 appends to a
//! half-full one (the same batches), and the spool's disk use against the cap.
//!
//! `cargo bench -p pikett-agent --bench spool_full` (figures in BENCHMARKS.md).
//! `SPOOL_BENCH_MIB` changes the cap, `SPOOL_BENCH_FSYNC=false` turns off `spool_fsync`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use pikett_agent::spool::Spool;
use pikett_proto::v1 as pb;

const APPENDS: usize = 100;
/// Samples per batch: a busy host's batch (about 30 KiB encoded).
const SAMPLES: usize = 500;

fn batch(round: usize) -> pb::Batch {
    let samples = (0..SAMPLES)
        .map(|i| pb::Sample {
            name: format!("host_filesystem_used_bytes_{}", i % 50),
            labels: BTreeMap::from([("mountpoint".to_string(), format!("/srv/volume{i}"))]).into_iter().collect(),
            value: (round * SAMPLES + i) as f64,
            unit: "By".into(),
            time_unix_ms: 1_700_000_000_000 + round as i64,
        })
        .collect();
    let checks = vec![pb::CheckResult::new(
        "host/load".into(),
        pb::CheckStatus::Ok,
        "load 0.4".into(),
        1_700_000_000_000 + round as i64,
    )];
    pb::Batch { samples, checks, ..Default::default() }
}

/// Bytes the directory's files take on disk (allocated blocks, as `du`).
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            // sled replaces its snapshot files as it goes: one may vanish between the calls.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

async fn time_appends(spool: &Spool, from: usize) -> f64 {
    let t = Instant::now();
    for round in from..from + APPENDS {
        spool.append(batch(round)).await.expect("append");
    }
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let mib: u64 = std::env::var("SPOOL_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let fsync = std::env::var("SPOOL_BENCH_FSYNC").map_or(true, |v| v != "false");
    let cap = mib * 1024 * 1024;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open_with(dir.path(), cap, 2 * 1024 * 1024, fsync).expect("spool");
        let batch_bytes = prost::Message::encoded_len(&batch(0));
        println!("spool_full: cap {mib} MiB, batches of {SAMPLES} samples ({batch_bytes} bytes encoded), spool_fsync = {fsync}");
        // Half full, then 100 appends below the cap.
        let mut round = 0;
        while spool.used_bytes() < pikett_agent::spool::live_budget(cap) / 2 {
            spool.append(batch(round)).await.expect("append");
            round += 1;
        }
        let below = time_appends(&spool, round).await;
        round += APPENDS;
        println!("  {APPENDS} appends below the cap: {below:.0} ms ({:.2} ms each)", below / APPENDS as f64);
        // Fill to the cap and keep appending until eviction has gone round the spool once.
        let fill = Instant::now();
        let mut peak_disk = 0;
        let passes: u64 = std::env::var("SPOOL_BENCH_PASSES").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
        for _ in 0..(passes * cap / batch_bytes as u64) {
            spool.append(batch(round)).await.expect("append");
            round += 1;
            if round % 64 == 0 {
                let d = disk_use(dir.path());
                peak_disk = peak_disk.max(d);
                if std::env::var_os("SPOOL_BENCH_TRACE").is_some() && round % 1024 == 0 {
                    println!("    round {round}: disk {:.1} MiB, live {:.1} MiB", d as f64 / 1048576.0, spool.used_bytes() as f64 / 1048576.0);
                }
            }
        }
        println!("  filled past the cap in {:.1} s ({round} appends)", fill.elapsed().as_secs_f64());
        let at_cap = time_appends(&spool, round).await;
        println!("  {APPENDS} appends at the cap:    {at_cap:.0} ms ({:.2} ms each)", at_cap / APPENDS as f64);
        println!("  ratio at/below: {:.2}", at_cap / below);
        spool.flush().await.expect("flush");
        let disk = disk_use(dir.path());
        println!(
            "  live batch bytes {:.1} MiB; disk use {:.1} MiB now, {:.1} MiB at most while filling ({:.0}% / {:.0}% of the cap)",
            spool.used_bytes() as f64 / 1048576.0,
            disk as f64 / 1048576.0,
            peak_disk as f64 / 1048576.0,
            disk as f64 * 100.0 / cap as f64,
            peak_disk as f64 * 100.0 / cap as f64,
        );
        println!("  pending batches: {}", spool.pending());
    });
}
