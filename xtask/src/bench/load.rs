//! Simulated agents for the ingest benchmarks (`bench ingest`, `bench compare`): one gRPC
//! stream each, a batch every interval, the ack latency of every batch sent in the
//! measured window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pikett_proto::v1 as pb;
use pikett_proto::v1::ingest_client::IngestClient;
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::ClientTlsConfig;

use super::pki::BenchPki;
use super::series::{Series, host_series};

/// What the simulated agents' batches hold.
#[derive(Clone, Copy)]
pub(crate) enum BatchKind {
    /// `bench ingest`: one metric, `Sensor i` labels, constant values (the figures in
    /// BENCHMARKS.md were measured with it).
    Sensors,
    /// A host's series ([`host_series`]): the same names and label sets every batch,
    /// values drifting a little.
    Host,
}

/// The simulated agents: `agents` streams to `url` (several URLs separated by spaces: agent
/// `i` connects to the `i mod n`-th, so they are split evenly), each sending `samples` samples (and one
/// check result) every `interval`; over TLS with a client certificate each when `pki` is set.
pub(crate) struct Load {
    pub url: String,
    pub agents: usize,
    pub samples: usize,
    pub interval: Duration,
    pub kind: BatchKind,
    pub pki: Option<Arc<BenchPki>>,
}

/// One connected simulated agent (hello sent, welcome received).
pub(crate) struct Stream {
    id: usize,
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::CollectorMessage>,
}

/// What the simulated agents saw of the batches sent in the measured window.
pub(crate) struct LoadResult {
    pub connected: usize,
    pub acked_batches: u64,
    /// Ack latencies, sorted.
    pub latencies_us: Vec<u64>,
}

/// A simulated agent's stream: connected (over TLS when `tls` is given), hello sent as
/// `host_id` of `customer` with spool `epoch`, welcome received. Returns the sender for
/// batches and the collector's answers.
pub(crate) async fn connect_agent(
    url: String,
    tls: Option<ClientTlsConfig>,
    host_id: String,
    customer: &str,
    min_interval: Duration,
    epoch: u64,
) -> anyhow::Result<(mpsc::Sender<pb::AgentMessage>, tonic::Streaming<pb::CollectorMessage>)> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url)?.connect_timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await?;
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            protocol_version: pikett_proto::PROTOCOL_VERSION,
            host_id,
            customer: customer.into(),
            agent_version: "bench".into(),
            capabilities: vec!["host".into()],
            min_interval_ms: min_interval.as_millis() as u64,
            spool_epoch: epoch,
        })),
    })
    .await?;
    let mut inbound =
        IngestClient::new(channel).stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?; // welcome
    Ok((tx, inbound))
}

/// Connects every simulated agent, a few at a time so the listen backlog does not overflow;
/// over TLS at most 8 at a time, because all come from 127.0.0.1 and the collector allows
/// one peer address 16 handshakes under way. Reports the ones that failed.
pub(crate) async fn connect_all(load: &Load) -> Vec<Stream> {
    let gate = Arc::new(Semaphore::new(if load.pki.is_some() { 8 } else { 64 }));
    let urls: Vec<&str> = load.url.split_whitespace().collect();
    let mut tasks = Vec::new();
    for id in 0..load.agents {
        let url = urls[id % urls.len()].to_string();
        let (pki, gate, interval) = (load.pki.clone(), gate.clone(), load.interval);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let host_id = format!("bench-{id:05}");
            let tls = pki.map(|p| p.agent_tls(&host_id)).transpose()?;
            let (tx, inbound) = connect_agent(url, tls, host_id, "bench", interval, id as u64 + 1).await?;
            anyhow::Ok(Stream { id, tx, inbound })
        }));
    }
    let mut streams = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => streams.push(s),
            Ok(Err(e)) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("agent failed to connect: {e:#}");
                }
            }
            Err(e) => eprintln!("agent task failed: {e}"),
        }
    }
    if failed > 3 {
        eprintln!("… {failed} agents failed to connect in all");
    }
    streams
}

/// Every stream sends from `start_at` (staggered over one interval) until `measure.1`;
/// batches sent within `measure` are counted with their ack latency. Returns when every
/// batch of the window is acknowledged, or 5 s after the window.
pub(crate) async fn drive(
    load: &Load,
    streams: Vec<Stream>,
    start_at: Instant,
    measure: (Instant, Instant),
) -> LoadResult {
    let connected = streams.len();
    let series = Arc::new(match load.kind {
        BatchKind::Sensors => Vec::new(),
        BatchKind::Host => host_series(load.samples),
    });
    let mut tasks = Vec::new();
    for s in streams {
        let stagger = load.interval.mul_f64(s.id as f64 / load.agents as f64);
        let agent = Agent { kind: load.kind, samples: load.samples, series: series.clone() };
        tasks.push(tokio::spawn(agent.run(s, load.interval, start_at + stagger, measure)));
    }
    let mut result = LoadResult { connected, acked_batches: 0, latencies_us: Vec::new() };
    for t in tasks {
        match t.await {
            Ok((acked, lat)) => {
                result.acked_batches += acked;
                result.latencies_us.extend(lat);
            }
            Err(e) => eprintln!("agent task failed: {e}"),
        }
    }
    result.latencies_us.sort_unstable();
    result
}

struct Agent {
    kind: BatchKind,
    samples: usize,
    series: Arc<Vec<Series>>,
}

impl Agent {
    /// Batches every interval from `start_at`; returns the batches acked of the window and
    /// their latencies.
    async fn run(
        self,
        s: Stream,
        interval: Duration,
        start_at: Instant,
        measure: (Instant, Instant),
    ) -> (u64, Vec<u64>) {
        let Stream { id, tx, mut inbound } = s;
        tokio::time::sleep_until(start_at.into()).await;
        let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let sender = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                let mut seq = 0;
                loop {
                    tick.tick().await;
                    if Instant::now() >= measure.1 {
                        break;
                    }
                    seq += 1;
                    let b = self.batch(id, seq);
                    sent.lock().expect("lock").insert(seq, Instant::now());
                    if tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Batch(b)) }).await.is_err() {
                        break;
                    }
                }
            })
        };
        let (mut acked, mut latencies_us) = (0, Vec::new());
        let deadline = measure.1 + Duration::from_secs(5);
        while let Ok(Ok(Some(msg))) = tokio::time::timeout_at(deadline.into(), inbound.message()).await {
            if let Some(pb::collector_message::Body::Ack(ack)) = msg.body
                && let Some(t) = sent.lock().expect("lock").remove(&ack.seq)
            {
                let now = Instant::now();
                if t >= measure.0 && t < measure.1 {
                    acked += 1;
                    latencies_us.push(now.duration_since(t).as_micros() as u64);
                }
            }
            if Instant::now() >= measure.1 && sent.lock().expect("lock").is_empty() {
                break;
            }
        }
        sender.abort();
        (acked, latencies_us)
    }

    fn batch(&self, id: usize, seq: u64) -> pb::Batch {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let samples = match self.kind {
            BatchKind::Sensors => (0..self.samples)
                .map(|i| pb::Sample {
                    name: "pikett_redfish_temperature_celsius".into(),
                    labels: [("sensor".to_string(), format!("Sensor {i}"))].into_iter().collect(),
                    value: 40.0 + (i % 7) as f64,
                    unit: "Cel".into(),
                    time_unix_ms: now,
                })
                .collect(),
            // Each agent at its own phase, so hosts do not all report the same values.
            BatchKind::Host => self
                .series
                .iter()
                .map(|s| pb::Sample {
                    name: s.family.name.into(),
                    labels: s.labels.iter().cloned().collect(),
                    value: s.value(seq + id as u64),
                    unit: s.family.unit.into(),
                    time_unix_ms: now,
                })
                .collect(),
        };
        pb::Batch {
            seq,
            created_unix_ms: now,
            samples,
            checks: vec![pb::CheckResult::new("host/disk:/".into(), pb::CheckStatus::Ok, "ok".into(), now)],
            ..Default::default()
        }
    }
}
