//! The daemon (`run`): one task per probe, a batcher that spools, and the uplink.
//!
//! probe tasks ──observations──▶ batcher ──append+flush──▶ spool ──▶ uplink ──▶ collector
//!                                   └──── agent/spool trouble (unspooled) ──────▶ uplink
//!
//! When the spool cannot be written (full disk, failed database) the batcher keeps the
//! observations in memory (bounded, samples dropped first and counted), reports a CRITICAL
//! `agent/spool` straight through the uplink, reopens the spool at every batch interval
//! and, once an append works again, sends the all-clear in that batch.

use std::sync::Arc;
use std::time::Duration;

use pikett_proto::v1 as pb;
use tokio::sync::{Notify, mpsc, watch};

use crate::config::AgentConfig;
use crate::observation::Observation;
use crate::probes::{self, Probe, SharedState, StateUpdate};
use crate::spool::{Spool, SpoolError};
use crate::uplink::Uplink;
use crate::wire;

/// Observations gathered into one batch at most (a batch is also cut every `batch_interval`).
const MAX_BATCH_OBSERVATIONS: usize = 5_000;
/// Observations kept in memory at most while the spool cannot be written.
const MAX_UNSPOOLED_OBSERVATIONS: usize = 4 * MAX_BATCH_OBSERVATIONS;
/// The check that reports the agent's own spool.
const SPOOL_CHECK: &str = "agent/spool";
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
    let (status_tx, status_rx) = watch::channel::<Option<pb::AgentStatus>>(None);
    let built = probes::from_config(&config, state);
    // A probe that cannot start reports UNKNOWN with the reason; the others run on.
    for e in &built.failures {
        tracing::error!(error = %e, "a probe cannot start; it reports UNKNOWN until fixed");
    }
    let probes = built.probes;
    warn_if_few_fds(config.max_concurrent_commands);
    let capabilities: Vec<String> = {
        let mut names: Vec<String> = probes.iter().map(|p| p.name().to_string()).collect();
        names.dedup();
        names
    };
    let host_id_for_renewal = host_id.clone();
    tracing::info!(host_id, probes = ?capabilities, next_seq = spool.next_seq()?, pending = spool.pending(), "agent starting");

    let (obs_tx, obs_rx) = mpsc::channel::<Polled>(1024);
    let mut probe_tasks = Vec::new();
    for probe in probes {
        probe_tasks.push(tokio::spawn(probe_loop(probe, obs_tx.clone(), shutdown.clone())));
    }
    drop(obs_tx);

    let wake = Arc::new(Notify::new());
    // The watchdog (WatchdogSec=) is fed while the batcher turns: it cuts a batch every
    // batch_interval, so a hung spool or batcher gets the agent restarted.
    let heartbeats = pikett_support::service::Heartbeats::new();
    let beat = heartbeats.register("batcher", config.batch_interval * 3);
    let batcher = tokio::spawn(batcher(obs_rx, spool.clone(), wake.clone(), config.batch_interval, status_tx, beat));
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
        status: status_rx,
    };
    let renewal = tokio::spawn(crate::enroll::renewal(config.clone(), host_id_for_renewal, shutdown.clone()));
    let (uplink_stop, uplink_stop_rx) = watch::channel(false);
    let uplink_task = tokio::spawn(uplink.run(uplink_stop_rx));
    let watchdog = tokio::spawn(heartbeats.feed_watchdog());
    pikett_support::service::notify_ready(&status_line(&spool));
    let status_spool = spool.clone();
    let status_task = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            every.tick().await;
            pikett_support::service::notify_status(&status_line(&status_spool));
        }
    });

    // Probe tasks end on shutdown; the batcher ends when they all have (and spools what is left);
    // then the uplink sends what is spooled, for a bounded time.
    for t in probe_tasks {
        let _ = t.await;
    }
    let batcher_result = batcher.await;
    let _ = uplink_stop.send(true);
    if let Ok(Err(e)) = &batcher_result {
        // The spool was replaced under the agent: stop now; the service manager restarts it.
        tracing::error!(error = %e, "batcher stopped");
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, uplink_task).await.is_err() {
        tracing::info!("collector did not take the rest of the spool in time; it is sent after restart");
    }
    renewal.abort();
    watchdog.abort();
    status_task.abort();
    if let Err(e) = spool.flush().await {
        tracing::warn!(error = %e, "final spool flush failed");
    }
    tracing::info!(pending = spool.pending(), "agent stopped");
    match batcher_result {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("batcher task failed: {e}")),
    }
}

/// The `STATUS=` line `systemctl status` shows.
fn status_line(spool: &Spool) -> String {
    match spool.pending() {
        0 => "running; every batch delivered".to_string(),
        n => format!("running; {n} batches spooled, waiting for the collector"),
    }
}

/// Warns when the open-files limit leaves too little room for `max_concurrent_commands`
/// plugins: they would fail to start with "too many open files".
fn warn_if_few_fds(max_commands: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let needed = probes::checks::command::fds_needed(max_commands);
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files_limit = limit.rlim_cur,
            needed,
            max_concurrent_commands = max_commands,
            "the open-files limit is low for max_concurrent_commands; raise LimitNOFILE or lower the key"
        );
    }
}

/// One poll's observations, and the probe state that must be spooled with them.
struct Polled {
    observations: Vec<Observation>,
    state: Vec<StateUpdate>,
}

async fn probe_loop(mut probe: Box<dyn Probe>, tx: mpsc::Sender<Polled>, mut shutdown: watch::Receiver<bool>) {
    let start = tokio::time::Instant::now() + probe.first_poll_delay();
    let mut ticker = tokio::time::interval_at(start, probe.interval());
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
        let state = probe.take_state();
        if tx.send(Polled { observations, state }).await.is_err() {
            break;
        }
    }
    probe.shutdown().await;
}

/// What the batcher holds that is not spooled yet.
#[derive(Default)]
struct Unspooled {
    observations: Vec<Observation>,
    state: Vec<StateUpdate>,
    /// Dropped from memory while the spool could not be written; reported with the next batch.
    dropped_samples: u64,
    dropped_other: u64,
}

impl Unspooled {
    /// Keeps at most `max` observations: the oldest samples go first, then the oldest of
    /// the rest (check results and events are worth more than one more reading).
    fn bound(&mut self, max: usize) {
        let mut excess = self.observations.len().saturating_sub(max);
        if excess == 0 {
            return;
        }
        self.observations.retain(|o| {
            if excess > 0 && matches!(o, Observation::Sample(_)) {
                excess -= 1;
                self.dropped_samples += 1;
                false
            } else {
                true
            }
        });
        if excess > 0 {
            self.observations.drain(..excess);
            self.dropped_other += excess as u64;
        }
    }
}

fn spool_status(state: pb::CheckState, summary: String) -> pb::CheckResult {
    pb::CheckResult {
        name: SPOOL_CHECK.into(),
        state: state as i32,
        summary,
        time_unix_ms: jiff::Timestamp::now().as_millisecond(),
    }
}

async fn batcher(
    mut rx: mpsc::Receiver<Polled>,
    spool: Arc<Spool>,
    wake: Arc<Notify>,
    every: Duration,
    status: watch::Sender<Option<pb::AgentStatus>>,
    beat: pikett_support::service::Beat,
) -> anyhow::Result<()> {
    let mut held = Unspooled::default();
    // Set while the spool cannot be written: the error the agent reports.
    let mut trouble: Option<String> = None;
    // The first batch after a start says the spool works: a CRITICAL reported before a
    // restart (disk freed, agent restarted) must clear.
    let mut report_ok = true;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.beat();
        // A batch is cut at every tick, when it is large, and when the probes have stopped.
        let (cut, closed) = tokio::select! {
            msg = rx.recv() => match msg {
                Some(polled) => {
                    held.observations.extend(polled.observations);
                    held.state.extend(polled.state);
                    (held.observations.len() >= MAX_BATCH_OBSERVATIONS && trouble.is_none(), false)
                }
                None => (true, true),
            },
            _ = ticker.tick() => (true, false),
        };
        if cut && (!held.observations.is_empty() || !held.state.is_empty() || trouble.is_some()) {
            let recovering = trouble.is_some();
            match spool_held(&spool, &mut held, recovering || report_ok).await {
                Ok(Some(seq)) => {
                    tracing::debug!(seq, "batch spooled");
                    report_ok = false;
                    if trouble.take().is_some() {
                        tracing::info!(seq, "spooling works again");
                        status.send_replace(None);
                    }
                    wake.notify_one();
                }
                Ok(None) => {}
                Err(e @ SpoolError::Replaced { .. }) => return Err(e.into()),
                Err(e) => {
                    held.bound(MAX_UNSPOOLED_OBSERVATIONS);
                    let summary = format!(
                        "cannot spool: {e}; {} observations held in memory, {} samples and {} others dropped",
                        held.observations.len(),
                        held.dropped_samples,
                        held.dropped_other
                    );
                    if trouble.is_none() {
                        tracing::error!(error = %e, "cannot spool; reporting agent/spool CRITICAL and retrying");
                    }
                    trouble = Some(summary.clone());
                    let check = spool_status(pb::CheckState::Critical, summary);
                    status.send_replace(Some(pb::AgentStatus { checks: vec![check] }));
                }
            }
        }
        if closed {
            return Ok(());
        }
    }
}

/// Spools what the batcher holds (after reopening a broken spool); with `recovering`, the
/// batch also carries `agent/spool` OK (after trouble, and once after each start).
/// `Ok(None)`: nothing needed spooling.
async fn spool_held(spool: &Arc<Spool>, held: &mut Unspooled, recovering: bool) -> Result<Option<u64>, SpoolError> {
    if spool.is_broken() {
        let s = spool.clone();
        tokio::task::spawn_blocking(move || s.recover())
            .await
            .map_err(|e| SpoolError::Sync(std::io::Error::other(e)))??;
    }
    if held.observations.is_empty() && !recovering {
        spool.put_state(&held.state)?;
        held.state.clear();
        return Ok(None);
    }
    // A copy: if the append fails, the observations stay held for the next attempt (one
    // batch per `batch_interval`; the copy costs far less than encoding and the flush).
    let mut batch = wire::to_batch(held.observations.clone());
    if recovering {
        let summary = "the spool works".to_string();
        batch.checks.push(spool_status(pb::CheckState::Ok, summary));
    }
    batch.dropped_samples += held.dropped_samples;
    batch.dropped_other += held.dropped_other;
    let seq = spool.append_with_state(batch, &held.state).await?;
    *held = Unspooled::default();
    Ok(Some(seq))
}
