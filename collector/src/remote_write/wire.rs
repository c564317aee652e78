//! Prometheus remote-write 1.0 on the wire: the `prometheus.WriteRequest` messages (only
//! the fields sent), a stored batch's samples as labelled series, and the snappy-compressed
//! body.
//!
//! Series carry the names `/metrics` gives the same samples ([`ExpositionNames`]), plus
//! `host` and `customer`, so one dashboard reads both. Labels are sorted by name (byte
//! order) and none has an empty value, as the protocol requires.

use std::collections::BTreeMap;

use pikett_proto::v1 as pb;

use crate::services::latest::ExpositionNames;

/// `prometheus.WriteRequest` (field 3, metadata, is not sent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries` (exemplars and histograms are not sent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Unix milliseconds.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// A series' labels: sorted by name, `__name__` among them.
pub type SeriesKey = Vec<(String, String)>;

/// What turns a stored sample into a series.
pub struct Labeller {
    pub names: ExpositionNames,
    /// `[remote_write] extra_labels`, validated by the config.
    pub extra: BTreeMap<String, String>,
}

impl Labeller {
    /// The series of every sample of `batch`, sent by `host` of `customer` and received at
    /// `received_ms`: (labels, value, timestamp in ms).
    pub fn series(&self, batch: &pb::Batch, host: &str, customer: &str, received_ms: i64) -> Vec<(SeriesKey, Sample)> {
        batch
            .samples
            .iter()
            .map(|s| {
                let mut labels: SeriesKey = Vec::with_capacity(s.labels.len() + 3 + self.extra.len());
                labels.push(("__name__".into(), self.names.metric(&s.name)));
                labels.push(("host".into(), host.into()));
                labels.push(("customer".into(), customer.into()));
                let mut own: Vec<(&String, &String)> = s.labels.iter().collect();
                own.sort();
                let renamed = self.names.labels(own.iter().map(|(k, _)| k.as_str()));
                labels.extend(renamed.into_iter().zip(own).map(|(k, (_, v))| (k, v.clone())));
                for (k, v) in &self.extra {
                    // A series' own labels win, as with Prometheus' external_labels.
                    if !labels.iter().any(|(name, _)| name == k) {
                        labels.push((k.clone(), v.clone()));
                    }
                }
                // An empty value means "no such label" to Prometheus, and the protocol forbids it.
                labels.retain(|(_, v)| !v.is_empty());
                labels.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                let timestamp =
                    [s.time_unix_ms, batch.created_unix_ms].into_iter().find(|t| *t > 0).unwrap_or(received_ms);
                (labels, Sample { value: s.value, timestamp })
            })
            .collect()
    }
}

/// The request for `samples`: one time series per label set, its samples in time order (one
/// per timestamp, the last one read: the store refuses two values at one time).
pub fn request(samples: Vec<(SeriesKey, Sample)>) -> WriteRequest {
    let mut series: BTreeMap<SeriesKey, Vec<Sample>> = BTreeMap::new();
    for (key, sample) in samples {
        series.entry(key).or_default().push(sample);
    }
    let timeseries = series
        .into_iter()
        .map(|(labels, mut samples)| {
            // Stable: of equal timestamps the later-read one ends up last, and dedup keeps the first.
            samples.sort_by_key(|s| s.timestamp);
            samples.reverse();
            samples.dedup_by_key(|s| s.timestamp);
            samples.reverse();
            TimeSeries { labels: labels.into_iter().map(|(name, value)| Label { name, value }).collect(), samples }
        })
        .collect();
    WriteRequest { timeseries }
}

/// The HTTP body: the encoded request, snappy block format (not framed).
pub fn body(request: &WriteRequest) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(request);
    snap::raw::Encoder::new().compress_vec(&raw).expect("snappy compresses any input below 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64, at: i64) -> pb::Sample {
        pb::Sample {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value,
            time_unix_ms: at,
            ..Default::default()
        }
    }

    fn labeller(extra: &[(&str, &str)]) -> Labeller {
        Labeller {
            names: ExpositionNames::from_exposition("# TYPE pikett_hosts gauge\n"),
            extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn series_are_named_as_on_metrics_with_host_customer_and_sorted_labels() {
        let batch = pb::Batch {
            created_unix_ms: 5_000,
            samples: vec![
                sample(
                    "pikett_host_load",
                    &[("mount", "/"), ("Zone", "a"), ("host", "spoofed"), ("empty", "")],
                    1.5,
                    0,
                ),
                sample("up", &[], 1.0, 4_000),
                sample("pikett_hosts", &[("dc", "own")], 2.0, 4_000),
            ],
            ..Default::default()
        };
        let l = labeller(&[("dc", "fra"), ("source", "pikett")]);
        let series = l.series(&batch, "web-1", "acme", 9_000);
        let names = |i: usize| series[i].0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        assert_eq!(
            names(0),
            "Zone=a,__name__=pikett_host_load,customer=acme,dc=fra,exported_host=spoofed,host=web-1,mount=/,source=pikett"
        );
        assert_eq!(series[0].1.timestamp, 5_000, "no sample time: the batch's");
        assert_eq!(names(1), "__name__=pikett_agent_up,customer=acme,dc=fra,host=web-1,source=pikett");
        assert_eq!(series[1].1, Sample { value: 1.0, timestamp: 4_000 });
        assert!(names(2).starts_with("__name__=pikett_agent_pikett_hosts,customer=acme,dc=own,"), "{}", names(2));
        assert_eq!(
            l.series(&pb::Batch { samples: vec![sample("x", &[], 1.0, 0)], ..Default::default() }, "h", "", 7)[0]
                .1
                .timestamp,
            7
        );
    }

    #[test]
    fn a_request_groups_series_orders_their_samples_and_decodes_back() {
        let key = |h: &str| vec![("__name__".to_string(), "m".to_string()), ("host".to_string(), h.to_string())];
        let s = |value, timestamp| Sample { value, timestamp };
        let req = request(vec![
            (key("b"), s(1.0, 20)),
            (key("a"), s(2.0, 30)),
            (key("b"), s(3.0, 10)),
            (key("b"), s(4.0, 20)),
        ]);
        assert_eq!(req.timeseries.len(), 2);
        assert_eq!(req.timeseries[0].labels[1].value, "a");
        assert_eq!(
            req.timeseries[1].samples,
            vec![s(3.0, 10), s(4.0, 20)],
            "time order, the later value of one timestamp"
        );
        let body = body(&req);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).expect("snappy block format");
        let back: WriteRequest = prost::Message::decode(raw.as_slice()).expect("a WriteRequest");
        assert_eq!(back, req);
    }
}
