//! `cargo bench -p pikett-collector --bench batch_bytes`: bytes on disk per stored sample and
//! per stored check result, for batches shaped like the agent's probes send them (the host
//! probe, a Redfish poll of a two-socket server, the services probe, external checks),
//! written through the real batch files and index. Prints a table for BENCHMARKS.md.

use std::collections::BTreeMap;
use std::time::Duration;

use pikett_collector::store::batch_files::{BatchFiles, Location};
use pikett_collector::store::{SledStorage, Storage};
use pikett_proto::v1 as pb;

/// Builds batch number `i` at time `t` (Unix ms).
type MakeBatch = fn(i64, u64) -> pb::Batch;

fn sample(name: &str, labels: &[(&str, &str)], value: f64, unit: &str, t: i64) -> pb::Sample {
    pb::Sample {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        value,
        unit: unit.into(),
        time_unix_ms: t,
    }
}

fn check(name: &str, summary: &str, t: i64) -> pb::CheckResult {
    pb::CheckResult::new(name.into(), pb::CheckStatus::Ok, summary.into(), t)
}

/// What the host probe sends every 30 s.
fn host(t: i64, i: u64) -> pb::Batch {
    let v = (i % 17) as f64;
    let mut samples = vec![
        sample("pikett_host_cpu_usage_percent", &[], 12.5 + v, "%", t),
        sample("pikett_host_cpus", &[], 16.0, "", t),
        sample("pikett_host_memory_total_bytes", &[], 68_719_476_736.0, "By", t),
        sample("pikett_host_memory_used_bytes", &[], 21_474_836_480.0 + v * 4096.0, "By", t),
        sample("pikett_host_swap_total_bytes", &[], 4_294_967_296.0, "By", t),
        sample("pikett_host_swap_used_bytes", &[], 0.0, "By", t),
        sample("pikett_host_uptime_seconds", &[], 1_234_567.0 + i as f64 * 30.0, "s", t),
    ];
    for p in ["1m", "5m", "15m"] {
        samples.push(sample("pikett_host_load", &[("period", p)], 0.5 + v / 10.0, "", t));
    }
    for (dev, mp) in [("/dev/sda2", "/"), ("/dev/sda1", "/boot"), ("/dev/mapper/data", "/var/lib/mysql")] {
        let l = [("device", dev), ("fstype", "xfs"), ("mountpoint", mp)];
        samples.push(sample("pikett_host_filesystem_size_bytes", &l, 107_374_182_400.0, "By", t));
        samples.push(sample("pikett_host_filesystem_used_bytes", &l, 53_687_091_200.0 + v, "By", t));
        samples.push(sample("pikett_host_filesystem_used_percent", &l, 50.0 + v / 100.0, "%", t));
    }
    let checks = vec![
        check("host/disk:/", "OK - 50% used", t),
        check("host/disk:/boot", "OK - 50% used", t),
        check("host/disk:/var/lib/mysql", "OK - 50% used", t),
        check("host/memory", "OK - 31% used", t),
    ];
    pb::Batch { seq: i, created_unix_ms: t, samples, checks, ..Default::default() }
}

/// A Redfish poll of a two-socket server every 60 s: temperatures, fans, power, voltages.
fn redfish(t: i64, i: u64) -> pb::Batch {
    let v = (i % 5) as f64;
    let mut samples = Vec::new();
    for s in ["CPU1 Temp", "CPU2 Temp", "System Board Inlet Temp", "System Board Exhaust Temp"] {
        samples.push(sample("pikett_redfish_temperature_celsius", &[("sensor", s)], 40.0 + v, "Cel", t));
    }
    for n in 1..=12 {
        let s = format!("System Board Fan{}{}", (n + 1) / 2, if n % 2 == 1 { "A" } else { "B" });
        samples.push(sample("pikett_redfish_fan_rpm", &[("sensor", &s)], 7_200.0 + v * 120.0, "RPM", t));
    }
    for n in 1..=2 {
        let s = format!("PS{n} Current 1");
        samples.push(sample("pikett_redfish_power_watts", &[("sensor", &s)], 180.0 + v, "W", t));
        let s = format!("PS{n} Voltage 1");
        samples.push(sample("pikett_redfish_voltage_volts", &[("sensor", &s)], 230.0, "V", t));
    }
    for n in 1..=16 {
        let s = format!("CPU{} VR{}", (n - 1) / 8 + 1, n);
        samples.push(sample("pikett_redfish_voltage_volts", &[("sensor", &s)], 1.8, "V", t));
    }
    let checks = [
        "redfish/health",
        "redfish/temperatures",
        "redfish/fans",
        "redfish/power",
        "redfish/storage",
        "redfish/memory",
    ]
    .iter()
    .map(|c| check(c, "OK", t))
    .collect();
    pb::Batch { seq: i, created_unix_ms: t, samples, checks, ..Default::default() }
}

/// The services probe every 30 s: ten units.
fn services(t: i64, i: u64) -> pb::Batch {
    let units =
        ["sshd", "crond", "chronyd", "nginx", "php-fpm", "mariadb", "postfix", "rsyslog", "firewalld", "pikett-agent"];
    let checks = units.iter().map(|u| check(&format!("service/{u}.service"), "active (running)", t)).collect();
    pb::Batch { seq: i, created_unix_ms: t, checks, ..Default::default() }
}

/// External checks every 60 s: five checks with their durations.
fn external(t: i64, i: u64) -> pb::Batch {
    let names = ["http/shop", "tcp/smtp", "dns/www", "tls/shop-cert", "command/check_mysql"];
    let checks = names.iter().map(|c| check(c, "OK - 0.042 second response time", t)).collect();
    let samples = names
        .iter()
        .map(|c| sample("pikett_check_duration_seconds", &[("check", c)], 0.042 + (i % 3) as f64 / 1000.0, "s", t))
        .collect();
    pb::Batch { seq: i, created_unix_ms: t, samples, checks, ..Default::default() }
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kinds: [(&str, MakeBatch); 4] =
        [("host probe", host), ("Redfish poll", redfish), ("services probe", services), ("external checks", external)];
    println!(
        "{:<16} {:>8} {:>7} {:>10} {:>11} {:>11} {:>12}",
        "batch", "samples", "checks", "protobuf", "compressed", "with index", "per item"
    );
    for (name, make) in kinds {
        let files = BatchFiles::open(&dir.path().join(name), Duration::from_secs(3600), false).expect("batch files");
        let storage = SledStorage::open(&dir.path().join(format!("{name}-index")), 8 << 20).expect("sled");
        let index = storage.tree("batch_index").expect("tree");
        let n = 2_000u64;
        let (mut raw, mut stored) = (0usize, 0usize);
        let mut last = pb::Batch::default();
        for i in 1..=n {
            let t = 1_800_000_000_000 + i as i64 * 30_000;
            last = make(t, i);
            let bytes = prost::Message::encode_to_vec(&last);
            raw += bytes.len();
            let loc = files.append(&bytes, t).expect("append");
            stored += loc.len as usize;
            let mut key = format!("web-{:04}.acme.example", i % 1000).into_bytes();
            key.push(0);
            key.extend_from_slice(&7u64.to_be_bytes());
            key.extend_from_slice(&i.to_be_bytes());
            index.insert(&key, loc.encode()).expect("index");
        }
        // Index entry: key (host id ~21 bytes + 17) and the 32-byte location, counted at
        // their encoded size (sled's own overhead is in the soak's figures).
        let per_batch_index = 21 + 17 + Location::ENCODED_LEN;
        let items = last.samples.len() + last.checks.len();
        let with_index = stored + per_batch_index * n as usize;
        println!(
            "{name:<16} {:>8} {:>7} {:>8} B {:>9} B {:>9} B {:>10.1} B",
            last.samples.len(),
            last.checks.len(),
            raw / n as usize,
            stored / n as usize,
            with_index / n as usize,
            with_index as f64 / n as f64 / items as f64,
        );
    }
}
