//! The latest value of every sample of every host, for `/metrics`.
//!
//! Each series is a Prometheus gauge with `host`, `customer` and the sample's
//! own labels. A series not updated within `metrics_staleness` is dropped,
//! so a host that stops sending a series stops exporting it.
//!
//! What an agent sends can never break the exposition or shadow the collector's own
//! metrics ([`ExpositionNames`]): names are made valid; a name outside the agents' space
//! (`pikett_…`), one of the collector's own families, or ending like a counter or a
//! histogram part is renamed deterministically (`pikett_agent_…`, `…_value`); label
//! names that are reserved (`__…`), ours (`host`, `customer`) or collide after
//! sanitising get `exported_` prefixes until unique; a series that would repeat another
//! is left out.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, RwLock};

use pikett_proto::received::{Labels, ReceivedBatch};

struct Latest {
    value: f64,
    at_ms: i64,
}

/// A series' identity: the metric name and its labels in key order.
#[derive(PartialEq, Eq)]
struct SeriesKey {
    name: String,
    labels: Vec<(String, String)>,
}

/// The identity of an incoming sample, borrowed from it: a known series is found and updated
/// without allocating. Hashes exactly like the [`SeriesKey`] it stands for.
struct SampleKey<'a> {
    name: &'a str,
    labels: Labels<'a>,
}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_series(state, &self.name, self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())), self.labels.len());
    }
}

impl Hash for SampleKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_series(state, self.name, self.labels.iter(), self.labels.len());
    }
}

fn hash_series<'a, H: Hasher>(state: &mut H, name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>, n: usize) {
    name.hash(state);
    n.hash(state);
    for (k, v) in labels {
        k.hash(state);
        v.hash(state);
    }
}

impl hashbrown::Equivalent<SeriesKey> for SampleKey<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        self.name == key.name
            && self.labels.len() == key.labels.len()
            && self.labels.iter().zip(&key.labels).all(|((k, v), (kk, vv))| k == kk && v == vv)
    }
}

impl SampleKey<'_> {
    fn to_owned(&self) -> SeriesKey {
        SeriesKey {
            name: self.name.to_string(),
            labels: self.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }
}

#[derive(Default)]
struct HostSeries {
    customer: String,
    /// Series → latest value.
    series: hashbrown::HashMap<SeriesKey, Latest>,
}

pub struct LatestSamples {
    hosts: RwLock<HashMap<String, Mutex<HostSeries>>>,
    /// Series one host may have at most (`max_series_per_host`; 0: no limit).
    max_series: usize,
    /// Samples not kept because their host was at its limit.
    pub over_limit: std::sync::atomic::AtomicU64,
}

impl Default for LatestSamples {
    fn default() -> Self {
        LatestSamples::new(0)
    }
}

/// The metric names the collector exports itself (with every suffix an exposition may
/// add to them): no agent series may take one of them.
#[derive(Debug, Default, Clone)]
pub struct ExpositionNames {
    reserved: std::collections::HashSet<String>,
}

/// Suffixes that make a gauge look like a counter, summary or histogram part to
/// Prometheus' linter.
const TYPED_SUFFIXES: [&str; 6] = ["_total", "_count", "_sum", "_bucket", "_created", "_info"];

impl ExpositionNames {
    /// The families of an exposition text (`# TYPE name …` lines) are reserved.
    pub fn from_exposition(text: &str) -> ExpositionNames {
        let mut reserved = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("# TYPE ").and_then(|r| r.split_whitespace().next()) {
                reserved.insert(name.to_string());
                for suffix in TYPED_SUFFIXES {
                    reserved.insert(format!("{name}{suffix}"));
                }
            }
        }
        ExpositionNames { reserved }
    }

    /// The exported name of an agent's metric.
    pub fn metric(&self, raw: &str) -> String {
        let mut name = sanitize_name(raw);
        if !name.starts_with("pikett_") || self.reserved.contains(&name) {
            name = format!("pikett_agent_{name}");
        }
        if TYPED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            name.push_str("_value");
        }
        name
    }

    /// The exported label names of a series, in the order of `keys` (sorted): unique,
    /// none reserved, none of ours.
    pub fn labels<'a>(&self, keys: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut used: std::collections::HashSet<String> = ["host".to_string(), "customer".to_string()].into();
        keys.map(|k| {
            // Label names, unlike metric names, may not contain ':'.
            let mut name = sanitize_name(k).replace(':', "_");
            if name.starts_with("__") {
                name = format!("exported{name}");
            }
            while used.contains(&name) {
                name = format!("exported_{name}");
            }
            used.insert(name.clone());
            name
        })
        .collect()
    }
}

/// A valid Prometheus metric or label name from anything.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl LatestSamples {
    pub fn new(max_series: usize) -> LatestSamples {
        LatestSamples { hosts: RwLock::default(), max_series, over_limit: std::sync::atomic::AtomicU64::new(0) }
    }

    /// The series limit per host.
    pub fn max_series(&self) -> usize {
        self.max_series
    }

    /// Drops series not updated within `staleness_ms`, and hosts left without any: runs on
    /// its own schedule, so memory does not wait for a scrape.
    pub fn sweep(&self, now_ms: i64, staleness_ms: i64) -> usize {
        let mut removed = 0;
        let mut empty = Vec::new();
        {
            let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
            for (host, entry) in hosts.iter() {
                let mut h = entry.lock().unwrap_or_else(|p| p.into_inner());
                let before = h.series.len();
                h.series.retain(|_, l| now_ms - l.at_ms <= staleness_ms);
                removed += before - h.series.len();
                if h.series.is_empty() {
                    empty.push(host.clone());
                }
            }
        }
        if !empty.is_empty() {
            let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
            for host in empty {
                if hosts.get(&host).is_some_and(|e| e.lock().unwrap_or_else(|p| p.into_inner()).series.is_empty()) {
                    hosts.remove(&host);
                }
            }
        }
        removed
    }

    /// Records the samples' values; returns how many were not kept because the host is at
    /// its series limit (new series only: known ones are always updated).
    pub fn update(&self, host: &str, customer: &str, batch: &ReceivedBatch, now_ms: i64) -> u64 {
        if batch.sample_count() == 0 {
            return 0;
        }
        if !self.hosts.read().unwrap_or_else(|p| p.into_inner()).contains_key(host) {
            self.hosts.write().unwrap_or_else(|p| p.into_inner()).entry(host.to_string()).or_default();
        }
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = hosts.get(host) else { return 0 };
        let mut h = entry.lock().unwrap_or_else(|p| p.into_inner());
        if h.customer != customer {
            customer.clone_into(&mut h.customer);
        }
        let mut dropped = 0;
        for s in batch.samples() {
            // A received sample's labels read in key order, so the borrowed key is the series'.
            let key = SampleKey { name: s.name, labels: s.labels };
            let latest = Latest { value: s.value, at_ms: now_ms };
            if let Some(known) = h.series.get_mut(&key) {
                *known = latest;
                continue;
            }
            if self.max_series > 0 && h.series.len() >= self.max_series {
                dropped += 1;
                continue;
            }
            h.series.insert(key.to_owned(), latest);
        }
        if dropped > 0 {
            self.over_limit.fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        }
        dropped
    }

    /// Drops stale series and renders the rest as Prometheus text (one family per metric
    /// name), with the names `names` allows.
    pub fn render(&self, now_ms: i64, staleness_ms: i64, names: &ExpositionNames, out: &mut String) {
        let mut families: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        for (host, entry) in hosts.iter() {
            let mut h = entry.lock().unwrap_or_else(|p| p.into_inner());
            h.series.retain(|_, l| now_ms - l.at_ms <= staleness_ms);
            for (SeriesKey { name, labels }, latest) in &h.series {
                let mut series = String::new();
                let metric = names.metric(name);
                let _ = write!(
                    series,
                    "{metric}{{host=\"{}\",customer=\"{}\"",
                    escape_label_value(host),
                    escape_label_value(&h.customer)
                );
                let keys = names.labels(labels.iter().map(|(k, _)| k.as_str()));
                for (k, (_, v)) in keys.iter().zip(labels) {
                    let _ = write!(series, ",{k}=\"{}\"", escape_label_value(v));
                }
                series.push('}');
                families.entry(metric).or_default().push((series, fmt_value(latest.value)));
            }
        }
        for (name, mut lines) in families {
            lines.sort();
            // Two raw names or label sets can come out the same: one series each.
            lines.dedup_by(|a, b| a.0 == b.0);
            let lines: Vec<String> = lines.into_iter().map(|(series, value)| format!("{series} {value}")).collect();
            let _ = writeln!(out, "# HELP {name} Latest value reported by the hosts' agents.");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pikett_proto::v1 as pb;

    /// A received batch of `samples`.
    fn rb(samples: &[pb::Sample]) -> ReceivedBatch {
        ReceivedBatch::from_batch(&pb::Batch { samples: samples.to_vec(), ..Default::default() })
    }

    #[test]
    fn stale_series_are_dropped_and_labels_escaped() {
        let l = LatestSamples::default();
        let s = |name: &str, v| pb::Sample {
            name: name.into(),
            labels: [("sensor".to_string(), "CPU1 \"Temp\"".to_string())].into_iter().collect(),
            value: v,
            ..Default::default()
        };
        l.update("web-1", "acme", &rb(&[s("pikett_redfish_temperature_celsius", 40.0)]), 1_000);
        l.update("web-1", "acme", &rb(&[s("pikett_other", 1.0)]), 10_000);
        let mut out = String::new();
        l.render(10_500, 5_000, &ExpositionNames::default(), &mut out);
        assert!(out.contains("pikett_other{host=\"web-1\",customer=\"acme\",sensor=\"CPU1 \\\"Temp\\\"\"} 1"), "{out}");
        assert!(!out.contains("pikett_redfish_temperature_celsius"), "stale series kept: {out}");
    }

    #[test]
    fn hostile_names_cannot_shadow_ours_or_break_the_exposition() {
        let ours =
            ExpositionNames::from_exposition("# TYPE pikett_hosts gauge\n# TYPE pikett_ingest_batches counter\n");
        assert_eq!(ours.metric("pikett_host_load"), "pikett_host_load");
        assert_eq!(ours.metric("up"), "pikett_agent_up");
        assert_eq!(ours.metric("pikett_hosts"), "pikett_agent_pikett_hosts");
        assert_eq!(ours.metric("pikett_ingest_batches_total"), "pikett_agent_pikett_ingest_batches_total_value");
        assert_eq!(ours.metric("pikett_x_total"), "pikett_x_total_value");
        let labels = ours.labels(["__name__", "a-b", "a_b", "customer", "exported_host", "host", "x:y"].into_iter());
        assert_eq!(
            labels,
            [
                "exported__name__",
                "a_b",
                "exported_a_b",
                "exported_customer",
                "exported_host",
                "exported_exported_host",
                "x_y"
            ]
        );
    }

    #[test]
    fn a_known_series_is_found_by_its_borrowed_key_and_updated_in_place() {
        let l = LatestSamples::new(3);
        let s = |labels: &[(&str, &str)], v| pb::Sample {
            name: "pikett_host_fs_used_ratio".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value: v,
            ..Default::default()
        };
        let (root, var) = ([("mount", "/"), ("fs", "ext4")], [("mount", "/var"), ("fs", "ext4")]);
        assert_eq!(l.update("web-1", "acme", &rb(&[s(&root, 0.1), s(&var, 0.2)]), 1_000), 0);
        // Labels given in another order are the same series; the limit (3) is never reached.
        let root_reordered = [("fs", "ext4"), ("mount", "/")];
        for i in 0..10 {
            assert_eq!(l.update("web-1", "acme", &rb(&[s(&root_reordered, i as f64), s(&var, 0.3)]), 2_000 + i), 0);
        }
        let hosts = l.hosts.read().unwrap();
        let h = hosts["web-1"].lock().unwrap();
        assert_eq!(h.series.len(), 2);
        let one = rb(&[s(&root, 0.0)]);
        let key = SampleKey { name: "pikett_host_fs_used_ratio", labels: one.samples().next().unwrap().labels };
        assert_eq!(h.series.get(&key).map(|l| (l.value, l.at_ms)), Some((9.0, 2_009)));
        use std::hash::BuildHasher as _;
        let hasher = h.series.hasher();
        assert_eq!(hasher.hash_one(&key), hasher.hash_one(key.to_owned()), "borrowed and owned keys hash alike");
    }

    #[test]
    fn series_are_capped_per_host_and_swept_without_a_scrape() {
        let l = LatestSamples::new(2);
        let s = |name: &str| pb::Sample { name: name.into(), value: 1.0, ..Default::default() };
        assert_eq!(l.update("web-1", "acme", &rb(&[s("a"), s("b"), s("c")]), 1_000), 1);
        assert_eq!(l.update("web-1", "acme", &rb(&[s("a"), s("b")]), 2_000), 0, "known series are always updated");
        assert_eq!(l.update("web-2", "acme", &rb(&[s("c")]), 2_000), 0, "the limit is per host");
        assert_eq!(l.over_limit.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(l.sweep(2_500, 1_000), 0);
        assert_eq!(l.sweep(10_000, 1_000), 3);
        assert!(l.hosts.read().unwrap().is_empty(), "hosts without series were kept");
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("a.b-c"), "a_b_c");
        assert_eq!(sanitize_name("1x"), "_1x");
    }
}
