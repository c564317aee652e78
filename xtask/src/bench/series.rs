//! The series of a synthetic host, shared by the simulated agents' batches and the
//! Prometheus target server, so both sides of `bench compare` store the same kind of data:
//! the same metric names and label sets every time, values drifting a little.

/// A metric family as a node exporter would expose it.
pub(crate) struct Family {
    pub name: &'static str,
    pub counter: bool,
    /// The unit pikett's samples carry (UCUM).
    pub unit: &'static str,
}

const FAMILIES: [Family; 5] = [
    Family { name: "node_cpu_seconds_total", counter: true, unit: "s" },
    Family { name: "node_network_receive_bytes_total", counter: true, unit: "By" },
    Family { name: "node_disk_read_bytes_total", counter: true, unit: "By" },
    Family { name: "node_filesystem_avail_bytes", counter: false, unit: "By" },
    Family { name: "node_hwmon_temp_celsius", counter: false, unit: "Cel" },
];

const CPU_MODES: [&str; 8] = ["idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user"];

pub(crate) struct Series {
    pub family: &'static Family,
    pub labels: Vec<(String, String)>,
    /// The series' index within its family: sets its base value and drift.
    k: usize,
}

impl Series {
    /// The value at `tick` (one tick per batch or scrape): counters grow steadily, gauges
    /// wander within a small band.
    pub fn value(&self, tick: u64) -> f64 {
        let k = self.k as u64;
        if self.family.counter {
            (12_345 + k * 1_000) as f64 + tick as f64 * (1.5 + (k % 10) as f64 * 0.25)
        } else {
            (40 + k % 30) as f64 + ((tick + k) % 20) as f64 * 0.5
        }
    }
}

/// `n` series of a host, grouped by family (so an exposition can give each family one
/// `# TYPE` line).
pub(crate) fn host_series(n: usize) -> Vec<Series> {
    let per_family = n.div_ceil(FAMILIES.len()).max(1);
    (0..n)
        .map(|i| {
            let (f, k) = (i / per_family, i % per_family);
            let family = &FAMILIES[f];
            let labels: Vec<(&str, String)> = match f {
                0 => vec![("cpu", (k / CPU_MODES.len()).to_string()), ("mode", CPU_MODES[k % CPU_MODES.len()].into())],
                1 => vec![("device", format!("eth{k}"))],
                2 => vec![("device", format!("nvme{}n{}", k / 8, k % 8 + 1))],
                3 => vec![
                    ("device", format!("/dev/mapper/vg0-lv{k}")),
                    ("fstype", "xfs".into()),
                    ("mountpoint", format!("/srv/vol{k}")),
                ],
                _ => vec![("chip", format!("platform_coretemp_{}", k / 16)), ("sensor", format!("temp{}", k % 16 + 1))],
            };
            Series { family, labels: labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect(), k }
        })
        .collect()
}
