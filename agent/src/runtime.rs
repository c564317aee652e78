//! The daemon (`run`): one task per probe, a batcher that spools, and the uplink.
//!
//! probe tasks ──observations──▶ batcher ──append+flush──▶ spool ──▶ uplink ──▶ collector
//!                                   └──── agent/spool trouble (unspooled) ──────▶ uplink
//!
//! When the spool cannot be written (full disk, failed database) the batcher keeps the
//! observations in memory (bounded, samples dropped first and counted), reports a CRITICAL
//! `agent/spool` straight through the uplink, reopens the spool at every batch interval
//! and, once an append works again, sends the all-clear in that batch.
//!
//! SIGHUP reloads the configuration file ([`crate::reload`]): the probes of changed
//! sections are stopped and started again; the batcher, the spool and the uplink (and so
//! the stream to the collector) go on untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pikett_proto::v1 as pb;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::AgentConfig;
use crate::observation::{Observation, State};
use crate::probes::checks::command::CommandLimits;
use crate::probes::{self, BuiltProbe, Probe, Section, SharedState, StateUpdate};
use crate::reload::{self, Plan, Stamp};
use crate::spool::{Spool, SpoolError};
use crate::uplink::{Cadence, Uplink};
use crate::wire;

/// Observations gathered into one batch at most (a batch is also cut every `batch_interval`).
const MAX_BATCH_OBSERVATIONS: usize = 5_000;
/// Observations kept in memory at most while the spool cannot be written.
const MAX_UNSPOOLED_OBSERVATIONS: usize = 4 * MAX_BATCH_OBSERVATIONS;
/// The check that reports the agent's own spool.
const SPOOL_CHECK: &str = "agent/spool";
/// How long a stopping agent keeps sending what is spooled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the agent until `shutdown` turns true; SIGHUP reloads `config_path` meanwhile.
pub async fn run(
    config: AgentConfig,
    config_path: PathBuf,
    host_id: String,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Before anything slow: SIGHUP's default action would end the agent.
    let mut hangup = listen_for_hangup();
    let spool = Arc::new(Spool::open_with(
        &config.spool_dir,
        config.spool_max_bytes.as_u64(),
        config.spool_cache_bytes.as_u64(),
        config.spool_fsync,
    )?);
    let state: SharedState = Arc::new(spool.state_store());
    let (status_tx, status_rx) = watch::channel::<Option<pb::AgentStatus>>(None);
    let limits = CommandLimits::new(config.max_concurrent_commands);
    // Stamped before the probes read their files: a file changed in between counts as changed.
    let stamps = reload::stamps(&config);
    let built = probes::build(&config, state.clone(), &limits, |_| true);
    // A probe that cannot start reports UNKNOWN with the reason; the others run on.
    for e in &built.failures {
        tracing::error!(error = %e, "a probe cannot start; it reports UNKNOWN until fixed");
    }
    warn_if_few_fds(config.max_concurrent_commands);

    let (obs_tx, obs_rx) = mpsc::channel::<ToBatcher>(1024);
    let mut probes = Probes { tx: obs_tx, state, limits, running: BTreeMap::new() };
    probes.start(built.probes, &stamps);
    let capabilities = probes.capabilities();
    let host_id_for_renewal = host_id.clone();
    tracing::info!(host_id, probes = ?capabilities, next_seq = spool.next_seq()?, pending = spool.pending(), "agent starting");

    let wake = Arc::new(Notify::new());
    let cadence = Arc::new(Cadence::new(config.min_interval()));
    // The watchdog (WatchdogSec=) is fed while the batcher turns: it cuts a batch every
    // batch_interval, so a hung spool or batcher gets the agent restarted.
    let heartbeats = pikett_support::service::Heartbeats::new();
    let beat = heartbeats.register("batcher", config.batch_interval * 3);
    let mut batcher = tokio::spawn(batcher(
        obs_rx,
        spool.clone(),
        wake.clone(),
        config.batch_interval,
        status_tx,
        beat,
        cadence.clone(),
    ));
    let (hello_tx, hello_rx) = watch::channel(pb::Hello {
        protocol_version: pikett_proto::PROTOCOL_VERSION,
        host_id,
        customer: config.customer.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities,
        min_interval_ms: config.min_interval().as_millis() as u64,
        spool_epoch: spool.epoch(),
    });
    let uplink = Uplink {
        collectors: config.collectors.clone(),
        ack_timeout: config.ack_timeout,
        failback_after: config.failback_after,
        tls: config.tls.clone(),
        hello: hello_rx,
        cadence: cadence.clone(),
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

    // Until told to stop, or the batcher stops by itself: reloads, one at a time (a stop
    // waits for the reload in progress).
    let mut in_force = config;
    let batcher_ended = loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break None,
            ended = &mut batcher => break Some(ended),
            () = hangup_received(&mut hangup) => {
                pikett_support::service::notify_reloading();
                reload(&config_path, &mut in_force, &mut probes, &hello_tx, &cadence).await;
                pikett_support::service::notify_ready(&status_line(&spool));
            }
        }
    };

    // Probe tasks end first; the batcher ends when they all have (and spools what is left);
    // then the uplink sends what is spooled, for a bounded time.
    probes.stop_all().await;
    let batcher_result = match batcher_ended {
        Some(ended) => ended,
        None => batcher.await,
    };
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

fn listen_for_hangup() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload needs a restart");
            None
        }
    }
}

/// The next SIGHUP; never, when the agent cannot listen for it.
async fn hangup_received(hangup: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(s) = hangup
        && s.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

/// SIGHUP (`systemctl reload`): reads and validates the file; an invalid one is refused
/// and logged with every error, the configuration in force stays.
async fn reload(
    path: &Path,
    in_force: &mut AgentConfig,
    probes: &mut Probes,
    hello: &watch::Sender<pb::Hello>,
    cadence: &Cadence,
) {
    let new = match reload::load(path) {
        Ok(new) => new,
        Err(errors) => {
            for e in &errors {
                tracing::error!(error = %e, "configuration reload refused; the configuration in force stays");
            }
            return;
        }
    };
    let restart_needed = reload::restart_needed(in_force, &new);
    let applied = reload::applied(in_force.clone(), &new);
    let stamps = reload::stamps(&applied);
    let plan = reload::plan(&probes.stamps(), &stamps);
    probes.apply(&applied, &plan, &stamps).await;
    // The collector learns these at the next stream; until then the batcher keeps up the
    // pace the stream announced (see `Cadence`).
    let min_interval = applied.min_interval();
    cadence.set_configured(min_interval);
    let capabilities = probes.capabilities();
    hello.send_modify(|h| {
        h.capabilities = capabilities;
        h.min_interval_ms = min_interval.as_millis() as u64;
    });
    *in_force = applied;
    let names = |sections: &[Section]| sections.iter().map(ToString::to_string).collect::<Vec<_>>();
    let (added, changed, removed) = (names(&plan.added), names(&plan.changed), names(&plan.removed));
    if restart_needed.is_empty() {
        tracing::info!(?added, ?changed, ?removed, "configuration reloaded");
    } else {
        tracing::warn!(
            ?added,
            ?changed,
            ?removed,
            ?restart_needed,
            "configuration reloaded; these changes take effect only at the next restart"
        );
    }
}

/// The running probes, one task each, by the section they come from.
struct Probes {
    tx: mpsc::Sender<ToBatcher>,
    /// The spool's probe state.
    state: SharedState,
    /// Shared by every command check for the agent's life (`max_concurrent_commands`
    /// needs a restart).
    limits: CommandLimits,
    running: BTreeMap<Section, Running>,
}

struct Running {
    stamp: Stamp,
    /// The probe's name ("host", "checks", ...), for the hello's capabilities.
    name: String,
    stop: watch::Sender<bool>,
    /// Ends with the names of the checks the probe reported.
    task: JoinHandle<BTreeSet<String>>,
}

impl Probes {
    fn start(&mut self, built: Vec<BuiltProbe>, stamps: &BTreeMap<Section, Stamp>) {
        for BuiltProbe { section, probe, started } in built {
            let Some(stamp) = stamps.get(&section) else {
                // Cannot be: both come from one configuration. Run it rather than lose it.
                tracing::warn!(%section, "a probe without its section; it runs until the next restart");
                continue;
            };
            let mut stamp = stamp.clone();
            stamp.started = started;
            let name = probe.name().to_string();
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(probe_loop(probe, self.tx.clone(), stop_rx));
            if let Some(old) = self.running.insert(section.clone(), Running { stamp, name, stop, task }) {
                // Not reached (a section is stopped before it starts again); stopped all the same.
                let _ = old.stop.send(true);
            }
        }
    }

    fn stamps(&self) -> BTreeMap<Section, Stamp> {
        self.running.iter().map(|(s, r)| (s.clone(), r.stamp.clone())).collect()
    }

    /// Probe names in the configured order, once each.
    fn capabilities(&self) -> Vec<String> {
        let mut names: Vec<String> = self.running.values().map(|r| r.name.clone()).collect();
        names.dedup();
        names
    }

    /// Stops the removed and changed sections, reports the removed checks OK one last
    /// time, and starts the added and changed ones from `config`.
    async fn apply(&mut self, config: &AgentConfig, plan: &Plan, stamps: &BTreeMap<Section, Stamp>) {
        let stopping: Vec<(bool, Section, Running)> = plan
            .removed
            .iter()
            .map(|s| (true, s))
            .chain(plan.changed.iter().map(|s| (false, s)))
            .filter_map(|(removed, s)| self.running.remove(s).map(|r| (removed, s.clone(), r)))
            .collect();
        // All told at once: a Redfish probe's logout may take its timeout.
        for (_, _, r) in &stopping {
            let _ = r.stop.send(true);
        }
        let mut retired = BTreeSet::new();
        for (removed, section, r) in stopping {
            let reported = r.task.await.unwrap_or_default();
            if removed {
                retired.extend(reported);
                if let Section::Check(name) | Section::Backup(name) = section {
                    retired.insert(name);
                }
            }
        }
        // After their probes' last results (the tasks have ended), so nothing reopens them.
        if !retired.is_empty() {
            let now = jiff::Timestamp::now();
            let observations =
                retired.iter().map(|name| Observation::check(name.as_str(), State::Ok, reload::REMOVED_SUMMARY, now));
            let polled = Polled { observations: observations.collect(), state: Vec::new() };
            let _ = self.tx.send(ToBatcher::Polled(polled)).await;
        }
        let wanted: BTreeSet<&Section> = plan.added.iter().chain(&plan.changed).collect();
        if wanted.is_empty() {
            return;
        }
        // The stopped probes' last state may still be in the batcher, not spooled: the new
        // ones read it from there first.
        let (reply, pending) = oneshot::channel();
        let pending = match self.tx.send(ToBatcher::Unspooled(reply)).await {
            Ok(()) => pending.await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let state: SharedState = Arc::new(reload::PendingState::new(pending, self.state.clone()));
        let built = probes::build(config, state, &self.limits, |s| wanted.contains(s));
        // Validated a moment ago; a file may have changed since. As at start: UNKNOWN, and
        // tried again at the next reload.
        for e in &built.failures {
            tracing::error!(error = %e, "a probe cannot start; it reports UNKNOWN until fixed");
        }
        self.start(built.probes, stamps);
    }

    /// Stops every probe and waits for them; the batcher then sees its input close.
    async fn stop_all(self) {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        for (_, r) in self.running {
            let _ = r.task.await;
        }
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

/// What the batcher is sent.
enum ToBatcher {
    Polled(Polled),
    /// Asks for the probe state it holds that is not spooled yet (oldest first).
    Unspooled(oneshot::Sender<Vec<StateUpdate>>),
}

/// Polls `probe` on its interval until `stop` turns true (or its sender is dropped);
/// returns the names of the checks it reported.
async fn probe_loop(
    mut probe: Box<dyn Probe>,
    tx: mpsc::Sender<ToBatcher>,
    mut stop: watch::Receiver<bool>,
) -> BTreeSet<String> {
    let mut reported = BTreeSet::new();
    let start = tokio::time::Instant::now() + probe.first_poll_delay();
    let mut ticker = tokio::time::interval_at(start, probe.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let observations = tokio::select! {
            o = probe.poll() => o,
            _ = stop.changed() => break,
        };
        for o in &observations {
            if let Observation::Check(c) = o
                && !reported.contains(&c.name)
            {
                reported.insert(c.name.clone());
            }
        }
        let state = probe.take_state();
        if tx.send(ToBatcher::Polled(Polled { observations, state })).await.is_err() {
            break;
        }
    }
    probe.shutdown().await;
    reported
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

fn spool_status(status: pb::CheckStatus, summary: String) -> pb::CheckResult {
    pb::CheckResult::new(SPOOL_CHECK.into(), status, summary, jiff::Timestamp::now().as_millisecond())
}

async fn batcher(
    mut rx: mpsc::Receiver<ToBatcher>,
    spool: Arc<Spool>,
    wake: Arc<Notify>,
    every: Duration,
    status: watch::Sender<Option<pb::AgentStatus>>,
    beat: pikett_support::service::Beat,
    cadence: Arc<Cadence>,
) -> anyhow::Result<()> {
    let mut held = Unspooled::default();
    // Set while the spool cannot be written: the error the agent reports.
    let mut trouble: Option<String> = None;
    // The first batch after a start says the spool works: a CRITICAL reported before a
    // restart (disk freed, agent restarted) must clear.
    let mut report_ok = true;
    // When the last batch was spooled, for the keepalive (see `Cadence`).
    let mut last_batch = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.beat();
        // A batch is cut at every tick, when it is large, and when the probes have stopped.
        let (cut, closed) = tokio::select! {
            msg = rx.recv() => match msg {
                Some(ToBatcher::Polled(polled)) => {
                    held.observations.extend(polled.observations);
                    held.state.extend(polled.state);
                    (held.observations.len() >= MAX_BATCH_OBSERVATIONS && trouble.is_none(), false)
                }
                Some(ToBatcher::Unspooled(reply)) => {
                    let _ = reply.send(held.state.clone());
                    (false, false)
                }
                None => (true, true),
            },
            _ = ticker.tick() => (true, false),
        };
        let keepalive = cadence.keepalive().is_some_and(|k| last_batch.elapsed() >= k);
        if cut && (!held.observations.is_empty() || !held.state.is_empty() || trouble.is_some() || keepalive) {
            let recovering = trouble.is_some();
            match spool_held(&spool, &mut held, recovering || report_ok, keepalive).await {
                Ok(Some(seq)) => {
                    tracing::debug!(seq, keepalive, "batch spooled");
                    last_batch = tokio::time::Instant::now();
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
                    let check = spool_status(pb::CheckStatus::Critical, summary);
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
/// batch also carries `agent/spool` OK (after trouble, and once after each start); with
/// `keepalive`, a batch is spooled even when empty. `Ok(None)`: nothing needed spooling.
async fn spool_held(
    spool: &Arc<Spool>,
    held: &mut Unspooled,
    recovering: bool,
    keepalive: bool,
) -> Result<Option<u64>, SpoolError> {
    if spool.is_broken() {
        let s = spool.clone();
        tokio::task::spawn_blocking(move || s.recover())
            .await
            .map_err(|e| SpoolError::Sync(std::io::Error::other(e)))??;
    }
    if held.observations.is_empty() && !recovering && !keepalive {
        spool.put_state(&held.state)?;
        held.state.clear();
        return Ok(None);
    }
    // A copy: if the append fails, the observations stay held for the next attempt (one
    // batch per `batch_interval`; the copy costs far less than encoding and the flush).
    let mut batch = wire::to_batch(held.observations.clone());
    if recovering {
        let summary = "the spool works".to_string();
        batch.checks.push(spool_status(pb::CheckStatus::Ok, summary));
    }
    batch.dropped_samples += held.dropped_samples;
    batch.dropped_other += held.dropped_other;
    let seq = spool.append_with_state(batch, &held.state).await?;
    *held = Unspooled::default();
    Ok(Some(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Running {
        spool: Arc<Spool>,
        tx: mpsc::Sender<ToBatcher>,
        cadence: Arc<Cadence>,
        task: JoinHandle<anyhow::Result<()>>,
        _dir: tempfile::TempDir,
    }

    /// A batcher on a fresh spool, cutting every `every`, past its first (immediate) tick.
    async fn batcher_on_a_spool(every: Duration) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open_with(dir.path(), 64 << 20, 1 << 20, false).unwrap());
        let (tx, rx) = mpsc::channel(16);
        let (status, _) = watch::channel(None);
        let beat = pikett_support::service::Heartbeats::new().register("batcher", Duration::from_secs(60));
        let cadence = Arc::new(Cadence::new(Duration::from_secs(30)));
        let task =
            tokio::spawn(batcher(rx, spool.clone(), Arc::new(Notify::new()), every, status, beat, cadence.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        Running { spool, tx, cadence, task, _dir: dir }
    }

    async fn unspooled(tx: &mpsc::Sender<ToBatcher>) -> Vec<StateUpdate> {
        let (reply, answer) = oneshot::channel();
        tx.send(ToBatcher::Unspooled(reply)).await.unwrap();
        answer.await.unwrap()
    }

    #[tokio::test]
    async fn the_batcher_tells_the_state_it_holds_until_it_is_spooled() {
        let b = batcher_on_a_spool(Duration::from_millis(400)).await;
        let state = vec![("redfish/cursor/x".to_string(), b"42".to_vec())];
        let obs = vec![Observation::check("c", State::Ok, "fine", jiff::Timestamp::now())];
        b.tx.send(ToBatcher::Polled(Polled { observations: obs, state: state.clone() })).await.unwrap();
        assert_eq!(unspooled(&b.tx).await, state, "held, not spooled yet");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(b.spool.pending(), 1);
        assert!(unspooled(&b.tx).await.is_empty(), "spooled with the batch");
        drop(b.tx);
        b.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn empty_batches_keep_the_announced_pace_only_while_the_probes_are_slower() {
        let b = batcher_on_a_spool(Duration::from_millis(100)).await;
        // The probes are as fast as the stream announced: nothing to send, nothing spooled.
        b.cadence.set_announced(30_000);
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(b.spool.pending(), 0);
        // A reload made them slower than the 1 s the stream announced: a batch every second.
        b.cadence.set_announced(1_000);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let spooled = b.spool.pending();
        assert!((2..=3).contains(&spooled), "{spooled} batches in 2.5 s");
        drop(b.tx);
        b.task.await.unwrap().unwrap();
    }
}
