//! `cargo bench -p pikett-proto --bench received`: decoding one batch as the collector
//! receives it ([`ReceivedBatch`]: bytes kept, samples read in place) against the generated
//! decoder (`v1::Batch`, a `String` per name and label), for a host probe's batch of 100
//! series shaped like a node exporter's (the same shape `cargo xtask bench compare` sends).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pikett_proto::received::ReceivedBatch;
use pikett_proto::v1;
use prost::Message;

fn host_batch(n: usize) -> v1::Batch {
    let modes = ["idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user"];
    let samples = (0..n)
        .map(|i| {
            let (family, k) = (i * 5 / n, i % (n / 5));
            let (name, unit, labels): (&str, &str, Vec<(&str, String)>) = match family {
                0 => ("node_cpu_seconds_total", "s", vec![("cpu", (k / 8).to_string()), ("mode", modes[k % 8].into())]),
                1 => ("node_network_receive_bytes_total", "By", vec![("device", format!("eth{k}"))]),
                2 => ("node_disk_read_bytes_total", "By", vec![("device", format!("nvme{}n{}", k / 8, k % 8 + 1))]),
                3 => (
                    "node_filesystem_avail_bytes",
                    "By",
                    vec![
                        ("device", format!("/dev/mapper/vg0-lv{k}")),
                        ("fstype", "xfs".into()),
                        ("mountpoint", format!("/srv/vol{k}")),
                    ],
                ),
                _ => (
                    "node_hwmon_temp_celsius",
                    "Cel",
                    vec![("chip", format!("platform_coretemp_{}", k / 16)), ("sensor", format!("temp{}", k % 16 + 1))],
                ),
            };
            v1::Sample {
                name: name.into(),
                labels: labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
                value: 12_345.0 + i as f64 * 1.5,
                unit: unit.into(),
                time_unix_ms: 1_764_000_000_000,
            }
        })
        .collect();
    v1::Batch { seq: 42, created_unix_ms: 1_764_000_000_000, samples, ..Default::default() }
}

fn decode(c: &mut Criterion) {
    let bytes = host_batch(100).encode_to_vec();
    let mut group = c.benchmark_group("decode a batch of 100 samples");
    group.throughput(Throughput::Elements(100));
    group.bench_function("ReceivedBatch (kept bytes, samples in place)", |b| {
        b.iter(|| ReceivedBatch::decode(black_box(bytes.as_slice())).expect("decodes"))
    });
    group.bench_function("v1::Batch (generated)", |b| {
        b.iter(|| v1::Batch::decode(black_box(bytes.as_slice())).expect("decodes"))
    });
    group.finish();
    let batch = ReceivedBatch::decode(bytes.as_slice()).expect("decodes");
    println!("{} bytes, {} samples", bytes.len(), batch.sample_count());
}

criterion_group!(benches, decode);
criterion_main!(benches);
