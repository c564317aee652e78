//! `[remote_write]`: every sample the collector stored, forwarded to a Prometheus
//! remote-write store (Prometheus with `--web.enable-remote-write-receiver`,
//! VictoriaMetrics, Mimir) for long-term history.
//!
//! The queue is the ingest log itself: batches are already durable there, in arrival order
//! (`services::batches`), so nothing is copied. The forwarder keeps its [`Position`] in the
//! log (tree `remote_write`), reads the batches after it, sends their samples and moves the
//! position only once the store acknowledged them. A restart or an outage of the store
//! loses nothing; a request whose acknowledgement was lost is sent again, which a store
//! takes as the same samples again.
//!
//! The bound: a batch received more than `max_backlog` ago (at most `[retention] batches`,
//! after which retention removes it) is skipped, its samples counted
//! (`pikett_remote_write_dropped_samples_total{reason="backlog"}`) and a warning logged.
//! Network errors, timeouts, 429 and 5xx are retried with backoff; another 4xx can never
//! succeed: its samples are dropped and counted (`reason="rejected"`). A store refuses a
//! whole request for one bad sample (Prometheus: out of order, too old), so a refused
//! request of several batches is sent again batch by batch and only the refused ones go.
//!
//! A batch may be forwarded just before the group commit that stores it is flushed. If the
//! collector dies in between, the agent resends the batch and it is forwarded again: a
//! duplicate, never a loss.

pub mod client;
pub mod position;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pikett_proto::v1 as pb;
use tokio::sync::watch;

use crate::config::RemoteWriteConfig;
use crate::services::batches::BatchLog;
use crate::services::latest::ExpositionNames;
use crate::services::metrics::{Metrics, ReasonLabel};
use crate::store::{StoreError, Tree};
use client::{Client, SendError};
use position::{LogEntry, Position, entries_after};
use wire::Labeller;

#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The tree holding the position.
const TREE: &str = "remote_write";
/// The ingest log's arrival-order index (`services::batches`).
const BY_TIME: &str = "batch_by_time";
/// How often the log is looked at when everything was forwarded.
const POLL: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Batches skipped as too old in one read (each is read to count its samples).
const SKIP_STEP: u64 = 10_000;
/// The backlog is counted up to this many batches, at most every [`COUNT_EVERY`].
const COUNT_CAP: usize = 100_000;
const COUNT_EVERY: Duration = Duration::from_secs(15);
/// The families `/metrics` writes besides the registry's (`api/http.rs`): agent series do
/// not take their names there, so they do not here either.
const HAND_WRITTEN_FAMILIES: &str = "# TYPE pikett_faults gauge\n\
     # TYPE pikett_ingest_checks_over_limit_total counter\n\
     # TYPE pikett_store_size_bytes gauge\n\
     # TYPE pikett_data_dir_free_bytes gauge\n\
     # TYPE pikett_data_dir_size_bytes gauge\n\
     # TYPE pikett_metrics_series_over_limit_total counter\n";

/// Starts forwarding (after reading the secret and CA files: their errors stop `serve`).
pub fn spawn(
    config: &RemoteWriteConfig,
    retention_batches: Duration,
    log: Arc<BatchLog>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RemoteWriteError> {
    let client = Client::new(config)?;
    let url = client::redacted(&config.url);
    let storage = log.storage().clone();
    let by_time = storage.tree(BY_TIME)?;
    let state = storage.tree(TREE)?;
    let own = format!("{}{HAND_WRITTEN_FAMILIES}", crate::api::http::prometheus_text(&metrics.encode()));
    let labeller = Labeller { names: ExpositionNames::from_exposition(&own), extra: config.extra_labels.clone() };
    for reason in ["rejected", "backlog"] {
        // Present (at 0) from the start, so rate() and alerts work before the first drop.
        let _ = metrics.remote_write_dropped_samples_total.get_or_create(&ReasonLabel { reason: reason.into() });
    }
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let retention_ms = retention_batches.as_millis() as i64;
    let pos = match state.get(position::KEY)?.map(|v| Position::decode(&v)) {
        Some(Some(pos)) if pos.ms > now_ms => {
            // New batches get at least the newest stored arrival time, which may be behind the
            // position after a restart with the clock stepped back: resend rather than skip.
            tracing::warn!(
                behind_ms = pos.ms - now_ms,
                "remote write: the clock is behind the last batch forwarded; forwarding from now on \
                 (batches received since then may be sent twice)"
            );
            Position::at(now_ms)
        }
        Some(Some(pos)) => {
            // Down longer than the retention with batches received after the position: retention
            // may remove some of them before they are read (and counted).
            let received_since = log.hosts().iter().any(|h| h.last_seen_ms > pos.ms);
            if pos.ms < now_ms - retention_ms && received_since {
                tracing::warn!(
                    behind_ms = now_ms - pos.ms,
                    "remote write: the last batch forwarded is older than [retention] batches; batches received \
                     after it may be removed by retention before they are forwarded (counted in \
                     pikett_remote_write_dropped_samples_total); raise [retention] batches to keep them longer"
                );
            }
            pos
        }
        Some(None) => {
            tracing::warn!("remote write: the stored position is damaged; forwarding batches received from now on");
            Position::at(now_ms)
        }
        None => {
            tracing::info!(url = %url, "remote write: first start; forwarding batches received from now on");
            Position::at(now_ms)
        }
    };
    state.insert(position::KEY, pos.encode())?;
    if config.url.starts_with("http:")
        && (config.bearer_token_file.is_some() || config.basic_auth.is_some())
        && !client::is_loopback(&config.url)
    {
        tracing::warn!(url = %url, "remote write: credentials go over plain http");
    }
    let reader = Arc::new(Reader {
        log,
        by_time,
        labeller,
        max_samples: config.max_samples_per_send,
        max_backlog_ms: (config.max_backlog.min(retention_batches).as_millis() as i64).max(1),
    });
    let forwarder = Forwarder { reader, state, client, metrics, url: url.clone() };
    tokio::spawn(forwarder.run(pos, shutdown));
    tracing::info!(url = %url, max_backlog = ?config.max_backlog, "remote write: forwarding stored samples");
    Ok(())
}

/// What one read of the log found.
struct Read {
    /// The position past what was skipped before the request's first batch.
    skipped_to: Position,
    /// Batches (and their samples) skipped as older than `max_backlog`.
    too_old: (u64, u64),
    /// Batches whose payload could not be read.
    unreadable: u64,
    request: Option<Request>,
    /// Batches after the position (up to [`COUNT_CAP`]), when asked for.
    backlog: Option<usize>,
}

/// One request, ready to send.
struct Request {
    body: Vec<u8>,
    /// The position once it is acknowledged.
    end: Position,
    samples: u64,
    batches: usize,
    /// Arrival of its first batch.
    oldest_ms: i64,
}

/// The read side, on blocking threads.
struct Reader {
    log: Arc<BatchLog>,
    by_time: Arc<dyn Tree>,
    labeller: Labeller,
    max_samples: usize,
    max_backlog_ms: i64,
}

impl Reader {
    /// The stored batch of `entry` and its host's customer; `None` if its payload cannot be
    /// read (logged) or is gone (retention).
    fn load(&self, entry: &LogEntry) -> Option<(pb::Batch, String)> {
        let (host, epoch, seq) = entry.batch()?;
        let bytes = match self.log.batch(&host, epoch, seq) {
            Ok(b) => b?,
            Err(e) => {
                tracing::warn!(host_id = %host, epoch, seq, error = %e, "remote write: cannot read a stored batch; skipping it");
                return None;
            }
        };
        match prost::Message::decode(bytes.as_slice()) {
            Ok(batch) => Some((batch, self.log.host(&host).map(|h| h.customer).unwrap_or_default())),
            Err(e) => {
                tracing::warn!(host_id = %host, epoch, seq, error = %e, "remote write: a stored batch does not decode; skipping it");
                None
            }
        }
    }

    /// The next request after `pos`: whole batches up to `max_samples` samples (one batch
    /// only with `single`), after skipping what is too old, unreadable or without samples.
    fn read(&self, pos: &Position, now_ms: i64, single: bool, count: bool) -> Result<Read, StoreError> {
        let cutoff = now_ms - self.max_backlog_ms;
        let mut end = pos.clone();
        let mut started: Option<(Position, i64)> = None;
        let (mut too_old, mut unreadable) = ((0u64, 0u64), 0u64);
        let (mut samples, mut batches) = (Vec::new(), 0usize);
        for entry in entries_after(self.by_time.as_ref(), pos) {
            let entry = entry?;
            if entry.received_ms < cutoff {
                // Arrival order: nothing too old follows a batch that is not.
                if started.is_some() || too_old.0 >= SKIP_STEP {
                    break;
                }
                too_old.0 += 1;
                too_old.1 += self.load(&entry).map_or(0, |(b, _)| b.samples.len() as u64);
                end.advance(&entry);
                continue;
            }
            let Some((batch, customer)) = self.load(&entry) else {
                unreadable += 1;
                end.advance(&entry);
                continue;
            };
            if batch.samples.is_empty() {
                end.advance(&entry);
                continue;
            }
            let (host, _, _) = entry.batch().expect("load parsed it");
            let series = self.labeller.series(&batch, &host, &customer, entry.received_ms);
            if started.is_some() && samples.len() + series.len() > self.max_samples {
                break;
            }
            started.get_or_insert_with(|| (end.clone(), entry.received_ms));
            samples.extend(series);
            batches += 1;
            end.advance(&entry);
            if single || samples.len() >= self.max_samples {
                break;
            }
        }
        let backlog = count.then(|| entries_after(self.by_time.as_ref(), pos).take(COUNT_CAP).count());
        let (skipped_to, request) = match started {
            None => (end, None),
            Some((skipped_to, oldest_ms)) => {
                let n = samples.len() as u64;
                let body = wire::body(&wire::request(samples));
                (skipped_to, Some(Request { body, end, samples: n, batches, oldest_ms }))
            }
        };
        Ok(Read { skipped_to, too_old, unreadable, request, backlog })
    }
}

struct Forwarder {
    reader: Arc<Reader>,
    state: Arc<dyn Tree>,
    client: Client,
    metrics: Arc<Metrics>,
    /// Redacted, for logs.
    url: String,
}

/// Whether `pos` has reached `until` (positions only move forward).
fn reached(pos: &Position, until: &Position) -> bool {
    pos.ms > until.ms || (pos.ms == until.ms && until.done.is_subset(&pos.done))
}

/// Sleeps `d`; false when the collector is stopping.
async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

impl Forwarder {
    /// Records the position (made durable by the next flush of the store, within 0.5 s;
    /// a position lost in a crash means a few requests sent twice).
    fn save(&self, pos: &Position) {
        if let Err(e) = self.state.insert(position::KEY, pos.encode()) {
            // The store refuses writes from here on; the writer's failure stops the collector.
            tracing::error!(error = %e, "remote write: cannot record the position");
        }
    }

    async fn run(self, mut pos: Position, mut shutdown: watch::Receiver<bool>) {
        let m = self.metrics.clone();
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        // After a refused request of several batches: one batch per request up to its end.
        let mut single_until: Option<Position> = None;
        let mut counted: Option<Instant> = None;
        while !*shutdown.borrow() {
            let now_ms = jiff::Timestamp::now().as_millisecond();
            let single = single_until.as_ref().is_some_and(|u| !reached(&pos, u));
            let count = counted.is_none_or(|t| t.elapsed() >= COUNT_EVERY);
            let (reader, from) = (self.reader.clone(), pos.clone());
            let read = match tokio::task::spawn_blocking(move || reader.read(&from, now_ms, single, count)).await {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "remote write: cannot read the ingest log; trying again");
                    if !pause(BACKOFF_MAX, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "remote write: the reading task failed; trying again");
                    if !pause(BACKOFF_MAX, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if let Some(n) = read.backlog {
                counted = Some(Instant::now());
                m.remote_write_backlog_batches.set(n as i64);
            }
            let (old_batches, old_samples) = read.too_old;
            if old_batches > 0 {
                m.remote_write_dropped_samples_total
                    .get_or_create(&ReasonLabel { reason: "backlog".into() })
                    .inc_by(old_samples);
                tracing::warn!(
                    batches = old_batches,
                    samples = old_samples,
                    "remote write: skipped batches older than max_backlog that were never forwarded"
                );
            }
            if read.unreadable > 0 {
                tracing::warn!(batches = read.unreadable, "remote write: skipped stored batches that cannot be read");
            }
            if read.skipped_to != pos {
                pos = read.skipped_to;
                self.save(&pos);
            }
            let Some(req) = read.request else {
                single_until = None;
                if old_batches >= SKIP_STEP {
                    // More to skip: on at once.
                    continue;
                }
                m.remote_write_backlog_seconds.set(0);
                m.remote_write_backlog_batches.set(0);
                if !pause(POLL, &mut shutdown).await {
                    return;
                }
                continue;
            };
            m.remote_write_backlog_seconds.set(((now_ms - req.oldest_ms) / 1000).max(0));
            let sent = tokio::select! {
                sent = self.client.send(req.body) => sent,
                // Not acknowledged: sent again after the restart.
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            match sent {
                Ok(()) => {
                    m.remote_write_samples_total.inc_by(req.samples);
                    pos = req.end;
                    self.save(&pos);
                    if failing {
                        tracing::info!(url = %self.url, "remote write: the store accepts samples again");
                    }
                    (failing, backoff) = (false, BACKOFF_MIN);
                }
                Err(SendError::Retryable(error)) => {
                    m.remote_write_failed_sends_total.inc();
                    tracing::warn!(url = %self.url, error = %error, retry_in = ?backoff, "remote write: sending failed; retrying");
                    failing = true;
                    if !pause(backoff, &mut shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(SendError::Refused { status, message }) => {
                    m.remote_write_failed_sends_total.inc();
                    if req.batches > 1 && matches!(status, 400 | 413) {
                        tracing::warn!(
                            url = %self.url, error = %message, batches = req.batches,
                            "remote write: the store refused a request; sending its batches one by one"
                        );
                        single_until = Some(req.end);
                    } else {
                        m.remote_write_dropped_samples_total
                            .get_or_create(&ReasonLabel { reason: "rejected".into() })
                            .inc_by(req.samples);
                        tracing::warn!(
                            url = %self.url, error = %message, samples = req.samples,
                            "remote write: the store refused samples; they are dropped (sending them again cannot succeed)"
                        );
                        pos = req.end;
                        self.save(&pos);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::batches::{Sender, WriteRequest};
    use crate::store::batch_files::BatchFiles;
    use crate::store::{SledStorage, Storage};

    fn store(log: &BatchLog, host: &str, seq: u64, samples: usize, at_ms: i64) {
        let sender = Arc::new(Sender {
            host_id: host.into(),
            customer: "acme".into(),
            agent_version: "test".into(),
            capabilities: Vec::new(),
            min_interval_ms: 1000,
            spool_epoch: 7,
        });
        let samples = (0..samples)
            .map(|i| pb::Sample {
                name: format!("pikett_s{i}"),
                value: i as f64,
                time_unix_ms: at_ms,
                ..Default::default()
            })
            .collect();
        let batch =
            pikett_proto::received::ReceivedBatch::from_batch(&pb::Batch { seq, samples, ..Default::default() });
        let (reply, _) = tokio::sync::oneshot::channel();
        log.apply(&[WriteRequest { sender, batch, status: false, series_over_limit: 0, reply }], at_ms).unwrap();
    }

    fn decode(req: &Request) -> wire::WriteRequest {
        let raw = snap::raw::Decoder::new().decompress_vec(&req.body).unwrap();
        prost::Message::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn reads_whole_batches_up_to_the_limit_skipping_old_and_empty_ones() {
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let files = BatchFiles::open(dir.path(), Duration::from_secs(10), false).unwrap();
        let log = Arc::new(BatchLog::open(storage.clone(), files).unwrap());
        store(&log, "web1", 1, 3, 1_000); // older than max_backlog
        store(&log, "web1", 2, 0, 50_000); // checks only
        store(&log, "web1", 3, 2, 60_000);
        store(&log, "web2", 1, 2, 60_000); // same millisecond, later group: after it
        store(&log, "web1", 4, 5, 70_000); // more than the limit: alone
        let reader = Reader {
            log: log.clone(),
            by_time: storage.tree(BY_TIME).unwrap(),
            labeller: Labeller { names: ExpositionNames::default(), extra: Default::default() },
            max_samples: 4,
            max_backlog_ms: 30_000,
        };
        let read = reader.read(&Position::at(0), 80_000, false, true).unwrap();
        assert_eq!(read.too_old, (1, 3));
        assert_eq!(read.backlog, Some(5));
        assert_eq!(read.skipped_to.ms, 50_000, "past the old and the empty batch");
        let req = read.request.expect("a request");
        assert_eq!((req.samples, req.batches, req.oldest_ms), (4, 2, 60_000));
        let sent = decode(&req);
        assert_eq!(sent.timeseries.len(), 4);
        let labels: Vec<_> = sent.timeseries[0].labels.iter().map(|l| format!("{}={}", l.name, l.value)).collect();
        assert_eq!(labels, ["__name__=pikett_s0", "customer=acme", "host=web1"]);
        assert_eq!(sent.timeseries[0].samples, [wire::Sample { value: 0.0, timestamp: 60_000 }]);

        let next = reader.read(&req.end, 80_000, false, false).unwrap();
        assert_eq!(next.too_old, (0, 0));
        let last = next.request.expect("the large batch");
        assert_eq!((last.samples, last.batches), (5, 1));
        assert!(reader.read(&last.end, 80_000, false, true).unwrap().request.is_none(), "all forwarded");

        let one = reader.read(&read.skipped_to, 80_000, true, false).unwrap().request.unwrap();
        assert_eq!(one.batches, 1, "one batch per request after a refusal");
    }

    #[test]
    fn the_end_of_a_request_is_reached_only_with_all_its_batches() {
        let mut until = Position::at(5);
        until.done.insert(b"a".to_vec());
        until.done.insert(b"b".to_vec());
        let mut pos = Position::at(5);
        pos.done.insert(b"a".to_vec());
        assert!(!reached(&pos, &until));
        pos.done.insert(b"b".to_vec());
        assert!(reached(&pos, &until));
        assert!(reached(&Position::at(6), &until));
        assert!(!reached(&Position::at(4), &until));
    }
}
