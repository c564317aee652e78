//! The daemon (`run`): one task per probe, a batcher that spools, and the uplink.
//!
//! probe tasks ──observations──▶ batcher ──append+flush──▶ spool ──▶ uplink ──▶ collector

use std::sync::Arc;
use std::time::Duration;

use pikett_proto::v1 as pb;
use tokio::sync::{Notify, mpsc, watch};

use crate::config::AgentConfig;
use crate::observation::Observation;
use crate::probes::{self, Probe, SharedState};
use crate::spool::Spool;
use crate::uplink::Uplink;
use crate::wire;

/// Observations gathered into one batch at most (a batch is also cut every `batch_interval`).
const MAX_BATCH_OBSERVATIONS: usize = 5_000;
/// How long a stopping agent keeps sending what is spooled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(config: AgentConfig, host_id: String, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let spool = Arc::new(Spool::open_with(
        &config.spool_dir,
        config.spool_max_bytes.as_u64(),
        config.spool_cache_bytes.as_u64(),
        config.spool_fsync,
    )?);
    let state: SharedState = Arc::new(spool.state_store());
    let probes = probes::from_config(&config, state).map_err(anyhow::Error::msg)?;
    let capabilities: Vec<String> = {
        let mut names: Vec<String> = probes.iter().map(|p| p.name().to_string()).collect();
        names.dedup();
        names
    };
    tracing::info!(host_id, probes = ?capabilities, next_seq = spool.next_seq()?, pending = spool.pending(), "agent starting");

    let (obs_tx, obs_rx) = mpsc::channel::<Vec<Observation>>(1024);
    let mut probe_tasks = Vec::new();
    for probe in probes {
        probe_tasks.push(tokio::spawn(probe_loop(probe, obs_tx.clone(), shutdown.clone())));
    }
    drop(obs_tx);

    let wake = Arc::new(Notify::new());
    let batcher = tokio::spawn(batcher(obs_rx, spool.clone(), wake.clone(), config.batch_interval));
    let uplink = Uplink {
        collectors: config.collectors.clone(),
        ack_timeout: config.ack_timeout,
        failback_after: config.failback_after,
        tls: config.tls.clone(),
        hello: pb::Hello {
            protocol_version: pikett_proto::PROTOCOL_VERSION,
            host_id,
            customer: config.customer.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities,
            min_interval_ms: config.min_interval().as_millis() as u64,
            spool_epoch: spool.epoch(),
        },
        spool: spool.clone(),
        wake,
    };
    let (uplink_stop, uplink_stop_rx) = watch::channel(false);
    let uplink_task = tokio::spawn(uplink.run(uplink_stop_rx));

    // Probe tasks end on shutdown; the batcher ends when they all have (and spools what is left);
    // then the uplink sends what is spooled, for a bounded time.
    for t in probe_tasks {
        let _ = t.await;
    }
    let batcher_result = batcher.await;
    let _ = uplink_stop.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, uplink_task).await.is_err() {
        tracing::info!("collector did not take the rest of the spool in time; it is sent after restart");
    }
    spool.flush().await?;
    tracing::info!(pending = spool.pending(), "agent stopped");
    match batcher_result {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("batcher task failed: {e}")),
    }
}

async fn probe_loop(
    mut probe: Box<dyn Probe>,
    tx: mpsc::Sender<Vec<Observation>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(probe.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let observations = tokio::select! {
            o = probe.poll() => o,
            _ = shutdown.changed() => break,
        };
        if tx.send(observations).await.is_err() {
            break;
        }
    }
    probe.shutdown().await;
}

async fn batcher(
    mut rx: mpsc::Receiver<Vec<Observation>>,
    spool: Arc<Spool>,
    wake: Arc<Notify>,
    every: Duration,
) -> anyhow::Result<()> {
    let mut pending: Vec<Observation> = Vec::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A batch is cut at every tick, when it is large, and when the probes have stopped.
        let (cut, closed) = tokio::select! {
            msg = rx.recv() => match msg {
                Some(obs) => { pending.extend(obs); (pending.len() >= MAX_BATCH_OBSERVATIONS, false) }
                None => (true, true),
            },
            _ = ticker.tick() => (true, false),
        };
        if cut && !pending.is_empty() {
            let batch = wire::to_batch(std::mem::take(&mut pending));
            let seq = spool.append(batch).await?;
            tracing::debug!(seq, "batch spooled");
            wake.notify_one();
        }
        if closed {
            return Ok(());
        }
    }
}
