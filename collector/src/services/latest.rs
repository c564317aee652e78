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
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, RwLock};

use pikett_proto::received::{Labels, ReceivedBatch};

/// Separates the name from a label, and one label from the next, in a [`Series`] key.
const LABEL_START: u8 = 0xFF;
/// Separates a label's key from its value. Neither byte occurs in UTF-8, so a key reads
/// back unambiguously.
const LABEL_VALUE: u8 = 0xFE;

/// Appends a series' identity to `out`: the name, then each label (in key order) as
/// `0xFF key 0xFE value`.
fn encode_key(name: &str, labels: Labels<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(name.as_bytes());
    for (k, v) in labels.iter() {
        out.push(LABEL_START);
        out.extend_from_slice(k.as_bytes());
        out.push(LABEL_VALUE);
        out.extend_from_slice(v.as_bytes());
    }
}

/// A series' name or a label's key or value, read back from a key.
type Text<'a> = std::borrow::Cow<'a, str>;

/// A series' name and labels, read back from its key.
fn decode_key(key: &[u8]) -> (Text<'_>, Vec<(Text<'_>, Text<'_>)>) {
    let mut parts = key.split(|&b| b == LABEL_START);
    let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let labels = parts
        .map(|label| {
            let mut kv = label.splitn(2, |&b| b == LABEL_VALUE);
            let k = String::from_utf8_lossy(kv.next().unwrap_or_default());
            (k, String::from_utf8_lossy(kv.next().unwrap_or_default()))
        })
        .collect();
    (name, labels)
}

/// One series of a host: its identity as one byte string (one allocation, compared with one
/// `memcmp`), and its latest value.
struct Series {
    hash: u64,
    key: Box<[u8]>,
    value: f64,
    at_ms: i64,
}

#[derive(Default)]
struct HostSeries {
    customer: String,
    series: Vec<Series>,
    /// Positions in `series`, by key.
    index: hashbrown::HashTable<u32>,
    /// The position in `series` of each sample of the host's last batch: a host sends the
    /// same series in the same order every time, so the next batch's i-th sample is checked
    /// there first, without hashing.
    last_order: Vec<u32>,
}

impl HostSeries {
    /// Drops the series `keep` refuses, and rebuilds the lookups.
    fn retain(&mut self, keep: impl FnMut(&Series) -> bool) {
        let before = self.series.len();
        self.series.retain(keep);
        if self.series.len() != before {
            let HostSeries { series, index, last_order, .. } = self;
            index.clear();
            for (i, s) in series.iter().enumerate() {
                index.insert_unique(s.hash, i as u32, |&p| series[p as usize].hash);
            }
            last_order.clear();
        }
    }
}

pub struct LatestSamples {
    hosts: RwLock<HashMap<String, Arc<Mutex<HostSeries>>>>,
    /// Hashes every series key, of every host.
    hasher: hashbrown::DefaultHashBuilder,
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
        LatestSamples {
            hosts: RwLock::default(),
            hasher: Default::default(),
            max_series,
            over_limit: std::sync::atomic::AtomicU64::new(0),
        }
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
        for (host, entry) in self.snapshot() {
            let mut h = entry.lock().unwrap_or_else(|p| p.into_inner());
            let before = h.series.len();
            h.retain(|s| now_ms - s.at_ms <= staleness_ms);
            removed += before - h.series.len();
            if h.series.is_empty() {
                empty.push(host);
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

    /// Every host's entry, taken under a short read lock: a sweep or a scrape going through
    /// them does not hold up a new host's first batch (a waiting writer would hold up every
    /// other ingest task's read too).
    fn snapshot(&self) -> Vec<(String, Arc<Mutex<HostSeries>>)> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts.iter().map(|(host, entry)| (host.clone(), entry.clone())).collect()
    }

    /// Records the samples' values; returns how many were not kept because the host is at
    /// its series limit (new series only: known ones are always updated).
    pub fn update(&self, host: &str, customer: &str, batch: &ReceivedBatch, now_ms: i64) -> u64 {
        if batch.sample_count() == 0 {
            return 0;
        }
        // Held while updating: a sweep removes a host (under the write lock) only while no
        // batch of it is being recorded, so none goes into an entry no longer in the table.
        let hosts = loop {
            let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
            if hosts.contains_key(host) {
                break hosts;
            }
            drop(hosts);
            self.hosts.write().unwrap_or_else(|p| p.into_inner()).entry(host.to_string()).or_default();
        };
        let Some(entry) = hosts.get(host) else { return 0 };
        let mut h = entry.lock().unwrap_or_else(|p| p.into_inner());
        if h.customer != customer {
            customer.clone_into(&mut h.customer);
        }
        let HostSeries { series, index, last_order, .. } = &mut *h;
        let mut key = Vec::with_capacity(128);
        let mut dropped = 0;
        for (i, s) in batch.samples().enumerate() {
            encode_key(s.name, s.labels, &mut key);
            let at = last_order.get(i).copied().filter(|&p| series.get(p as usize).is_some_and(|k| *k.key == *key));
            let at = at.or_else(|| {
                let hash = self.hasher.hash_one(&key[..]);
                index.find(hash, |&p| *series[p as usize].key == *key).copied()
            });
            let at = match at {
                Some(p) => {
                    let known = &mut series[p as usize];
                    (known.value, known.at_ms) = (s.value, now_ms);
                    p
                }
                None if self.max_series > 0 && series.len() >= self.max_series => {
                    dropped += 1;
                    continue;
                }
                None => {
                    let hash = self.hasher.hash_one(&key[..]);
                    let p = series.len() as u32;
                    series.push(Series { hash, key: key.as_slice().into(), value: s.value, at_ms: now_ms });
                    index.insert_unique(hash, p, |&q| series[q as usize].hash);
                    p
                }
            };
            // At most one hint per series: a batch repeating a series many times (a 16 MiB
            // message holds millions of tiny samples) must not leave a hint per sample behind.
            if i < series.len() {
                if last_order.len() <= i {
                    last_order.resize(i + 1, u32::MAX);
                }
                last_order[i] = at;
            }
        }
        // Only a hint, checked on use: a sample left out keeps its slot's old position.
        last_order.truncate(batch.sample_count().min(series.len()));
        if dropped > 0 {
            self.over_limit.fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        }
        dropped
    }

    /// Drops stale series and renders the rest as Prometheus text (one family per metric
    /// name), with the names `names` allows.
    pub fn render(&self, now_ms: i64, staleness_ms: i64, names: &ExpositionNames, out: &mut String) {
        let mut families: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (host, entry) in self.snapshot() {
            let mut h = entry.lock().unwrap_or_else(|p| p.into_inner());
            h.retain(|s| now_ms - s.at_ms <= staleness_ms);
            let (host, customer) = (escape_label_value(&host), escape_label_value(&h.customer));
            for s in &h.series {
                let (name, labels) = decode_key(&s.key);
                let mut series = String::new();
                let metric = names.metric(&name);
                let _ = write!(series, "{metric}{{host=\"{host}\",customer=\"{customer}\"");
                let keys = names.labels(labels.iter().map(|(k, _)| k.as_ref()));
                for (k, (_, v)) in keys.iter().zip(&labels) {
                    let _ = write!(series, ",{k}=\"{}\"", escape_label_value(v));
                }
                series.push('}');
                families.entry(metric).or_default().push((series, fmt_value(s.value)));
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
        assert_eq!(l.series_of("web-1").len(), 2);
        // Labels read back in key order.
        let root: Vec<(String, String)> = root_reordered.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(l.series_of("web-1").get(&("pikett_host_fs_used_ratio".to_string(), root)), Some(&(9.0, 2_009)));
    }

    type Model = BTreeMap<(String, Vec<(String, String)>), (f64, i64)>;

    impl LatestSamples {
        /// A host's series as (name, labels) → (value, at).
        fn series_of(&self, host: &str) -> Model {
            let Some(entry) = self.hosts.read().unwrap().get(host).cloned() else { return Model::new() };
            let h = entry.lock().unwrap();
            assert_eq!(h.index.len(), h.series.len(), "index and series disagree");
            h.series
                .iter()
                .map(|s| {
                    let (name, labels) = decode_key(&s.key);
                    let labels = labels.into_iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
                    ((name.into_owned(), labels), (s.value, s.at_ms))
                })
                .collect()
        }
    }

    proptest::proptest! {
        /// Whatever order a host's series come in from batch to batch (the order hint right,
        /// wrong or stale after a sweep), each series holds its last value, and a full host
        /// keeps what it has.
        #[test]
        fn the_table_holds_each_series_last_value_in_any_order(
            batches in proptest::collection::vec(
                (proptest::collection::vec((0usize..12, -5.0f64..5.0), 0..10), proptest::bool::ANY),
                1..30,
            ),
            limit in 0usize..8,
        ) {
            // Twelve series: names and label values that share prefixes and bytes.
            let series = |i: usize| -> (String, Vec<(String, String)>) {
                let name = ["a", "ab", "a_b"][i % 3].to_string();
                let labels = match i / 3 {
                    0 => vec![],
                    1 => vec![("k".to_string(), "v".to_string())],
                    2 => vec![("k".to_string(), "vk".to_string())],
                    _ => vec![("k".to_string(), "v".to_string()), ("kv".to_string(), "".to_string())],
                };
                (name, labels)
            };
            let l = LatestSamples::new(limit);
            let mut model = Model::new();
            for (t, (samples, sweep)) in batches.iter().enumerate() {
                let now = 1_000 * (t as i64 + 1);
                if *sweep {
                    l.sweep(now, 2_500);
                    model.retain(|_, (_, at)| now - *at <= 2_500);
                }
                let batch: Vec<pb::Sample> = samples
                    .iter()
                    .map(|&(i, v)| {
                        let (name, labels) = series(i);
                        pb::Sample { name, labels: labels.into_iter().collect(), value: v, ..Default::default() }
                    })
                    .collect();
                let mut dropped = 0;
                for &(i, v) in samples {
                    let key = series(i);
                    if model.contains_key(&key) || limit == 0 || model.len() < limit {
                        model.insert(key, (v, now));
                    } else {
                        dropped += 1;
                    }
                }
                proptest::prop_assert_eq!(l.update("h", "c", &rb(&batch), now), dropped);
                proptest::prop_assert_eq!(l.series_of("h"), model.clone());
            }
        }
    }

    #[test]
    fn a_batch_repeating_one_series_leaves_no_hint_per_sample() {
        let l = LatestSamples::default();
        let one = pb::Sample { name: "pikett_x".into(), value: 1.0, ..Default::default() };
        l.update("web-1", "acme", &rb(&vec![one; 10_000]), 1_000);
        let entry = l.hosts.read().unwrap().get("web-1").cloned().unwrap();
        let h = entry.lock().unwrap();
        assert_eq!(h.series.len(), 1);
        assert!(h.last_order.len() <= h.series.len(), "{} hints kept for one series", h.last_order.len());
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
