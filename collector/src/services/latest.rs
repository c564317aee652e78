//! The latest value of every sample of every host, for `/metrics`.
//!
//! Each series is a Prometheus gauge with `host`, `customer` and the sample's
//! own labels. A series not updated within `metrics_staleness` is dropped,
//! so a host that stops sending a series stops exporting it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Mutex, RwLock};

use pikett_proto::v1 as pb;

struct Latest {
    value: f64,
    at_ms: i64,
}

#[derive(Default)]
struct HostSeries {
    customer: String,
    /// (metric name, sorted labels) → latest value.
    series: HashMap<(String, Vec<(String, String)>), Latest>,
}

#[derive(Default)]
pub struct LatestSamples {
    hosts: RwLock<HashMap<String, Mutex<HostSeries>>>,
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
    pub fn update(&self, host: &str, customer: &str, samples: &[pb::Sample], now_ms: i64) {
        if samples.is_empty() {
            return;
        }
        if !self.hosts.read().unwrap_or_else(|p| p.into_inner()).contains_key(host) {
            self.hosts.write().unwrap_or_else(|p| p.into_inner()).entry(host.to_string()).or_default();
        }
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = hosts.get(host) else { return };
        let mut h = entry.lock().unwrap_or_else(|p| p.into_inner());
        customer.clone_into(&mut h.customer);
        for s in samples {
            let mut labels: Vec<(String, String)> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            labels.sort();
            h.series.insert((s.name.clone(), labels), Latest { value: s.value, at_ms: now_ms });
        }
    }

    /// Drops stale series and renders the rest as Prometheus text (one family per metric name).
    pub fn render(&self, now_ms: i64, staleness_ms: i64, out: &mut String) {
        let mut families: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        for (host, entry) in hosts.iter() {
            let mut h = entry.lock().unwrap_or_else(|p| p.into_inner());
            h.series.retain(|_, l| now_ms - l.at_ms <= staleness_ms);
            for ((name, labels), latest) in &h.series {
                let mut line = String::new();
                let _ = write!(
                    line,
                    "{}{{host=\"{}\",customer=\"{}\"",
                    sanitize_name(name),
                    escape_label_value(host),
                    escape_label_value(&h.customer)
                );
                for (k, v) in labels {
                    let k = sanitize_name(k);
                    // The sample's own `host`/`customer` labels must not clash with ours.
                    let k = if k == "host" || k == "customer" { format!("exported_{k}") } else { k };
                    let _ = write!(line, ",{k}=\"{}\"", escape_label_value(v));
                }
                let _ = write!(line, "}} {}", fmt_value(latest.value));
                families.entry(sanitize_name(name)).or_default().push(line);
            }
        }
        for (name, mut lines) in families {
            lines.sort();
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

    #[test]
    fn stale_series_are_dropped_and_labels_escaped() {
        let l = LatestSamples::default();
        let s = |name: &str, v| pb::Sample {
            name: name.into(),
            labels: [("sensor".to_string(), "CPU1 \"Temp\"".to_string())].into_iter().collect(),
            value: v,
            ..Default::default()
        };
        l.update("web-1", "acme", &[s("pikett_redfish_temperature_celsius", 40.0)], 1_000);
        l.update("web-1", "acme", &[s("pikett_other", 1.0)], 10_000);
        let mut out = String::new();
        l.render(10_500, 5_000, &mut out);
        assert!(out.contains("pikett_other{host=\"web-1\",customer=\"acme\",sensor=\"CPU1 \\\"Temp\\\"\"} 1"), "{out}");
        assert!(!out.contains("pikett_redfish_temperature_celsius"), "stale series kept: {out}");
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("a.b-c"), "a_b_c");
        assert_eq!(sanitize_name("1x"), "_1x");
    }
}
