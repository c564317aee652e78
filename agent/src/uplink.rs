//! The uplink: streams spooled batches to the first collector that answers,
//! deletes them from the spool when acknowledged, and reconnects with
//! jittered exponential backoff, failing over across the `collectors` list.
//!
//! Only acknowledged progress resets the backoff (a collector that accepts streams but
//! cannot store is not hammered); a collector that leaves batches unacknowledged for
//! `ack_timeout` is given up for the next; on any but the first collector the agent goes
//! back to the first after `failback_after`. See [`next_attempt`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pikett_proto::v1 as pb;
use pikett_proto::v1::ingest_client::IngestClient;
use tokio::sync::{Notify, mpsc, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::TlsConfig;
use crate::spool::Spool;

/// Batches sent but not yet acknowledged, at most.
const WINDOW: usize = 64;
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The pause before trying the next collector of one round.
const BETWEEN_COLLECTORS: Duration = Duration::from_millis(500);

pub struct Uplink {
    pub collectors: Vec<String>,
    /// Sent batches unacknowledged this long: give this collector up for the next.
    pub ack_timeout: Duration,
    /// On a collector other than the first: go back to the first after this long.
    pub failback_after: Duration,
    pub tls: Option<TlsConfig>,
    /// Sent at the start of every stream; a reload changes it (probes, shortest interval)
    /// for the next stream, never ending the one that is up.
    pub hello: watch::Receiver<pb::Hello>,
    /// What the stream that is up announced, for the batcher's keepalive.
    pub cadence: Arc<Cadence>,
    pub spool: Arc<Spool>,
    /// Signalled when a new batch is spooled.
    pub wake: Arc<Notify>,
    /// The agent's trouble that cannot be spooled (`agent/spool`), sent straight on the stream.
    pub status: watch::Receiver<Option<pb::AgentStatus>>,
}

/// The agent's shortest probe interval: what the stream's hello announced and what the
/// configuration in force has. They differ after a reload until the next stream.
#[derive(Debug, Default)]
pub struct Cadence {
    announced_ms: AtomicU64,
    configured_ms: AtomicU64,
}

impl Cadence {
    pub fn new(configured: Duration) -> Cadence {
        let cadence = Cadence::default();
        cadence.set_configured(configured);
        cadence
    }

    pub fn set_configured(&self, interval: Duration) {
        self.configured_ms.store(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn set_announced(&self, min_interval_ms: u64) {
        self.announced_ms.store(min_interval_ms, Ordering::Relaxed);
    }

    /// How often a batch must be spooled, empty if need be, to keep the host up at the
    /// collector; `None` when the probes report often enough by themselves.
    pub fn keepalive(&self) -> Option<Duration> {
        keepalive(self.announced_ms.load(Ordering::Relaxed), self.configured_ms.load(Ordering::Relaxed))
    }
}

/// The collector finds a host down after 3× the shortest interval its hello announced
/// (at least 10 s), and learns a new one only at the next stream. After a reload that made
/// the shortest interval longer (a fast check removed), batches must still come at the
/// announced pace until then: every announced interval (at least 1 s, the collector's
/// floor). Pure, for the tests.
pub fn keepalive(announced_ms: u64, configured_ms: u64) -> Option<Duration> {
    (announced_ms > 0 && configured_ms > announced_ms).then(|| Duration::from_millis(announced_ms.max(1_000)))
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Connect(String),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
    #[error("no acknowledgement within {0:?}")]
    AckTimeout(Duration),
    #[error("returning to the preferred collector")]
    Failback,
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

/// How a session ended, for the reconnect policy.
struct Ended {
    /// At least one batch was acknowledged: the collector works, the backoff starts over.
    progress: bool,
    error: SessionError,
}

/// Full-jitter backoff: a random delay in [d/2, d], d doubling up to the max.
fn jittered(d: Duration) -> Duration {
    let lo = d.as_millis() as u64 / 2;
    Duration::from_millis(rand::random_range(lo..=d.as_millis() as u64))
}

/// Where to go after a session ended: `(next index, pause before it)`, and the backoff to
/// use after that. Pure, so the policy is tested without a network.
///
/// - Progress (acknowledged batches) resets the backoff; a welcome alone does not, so a
///   collector that accepts streams but cannot store is not hammered.
/// - A stream that ended after progress is retried on the same collector (it restarted).
/// - Anything else moves to the next collector, after a short pause; once every collector
///   has been tried the pause is the full backoff, which then doubles.
/// - `Failback` goes to the first collector at once.
fn next_attempt(index: usize, collectors: usize, ended: &Ended, backoff: Duration) -> (usize, Duration, Duration) {
    let backoff = if ended.progress { BACKOFF_START } else { backoff };
    if matches!(ended.error, SessionError::Failback) {
        return (0, Duration::ZERO, backoff);
    }
    let next = if ended.progress { index } else { index + 1 };
    if collectors > 1 && !next.is_multiple_of(collectors) {
        // Between collectors of one round: a short pause, not the whole backoff.
        return (next, BETWEEN_COLLECTORS, backoff);
    }
    (next, backoff, (backoff * 2).min(BACKOFF_MAX))
}

impl Uplink {
    /// Runs until `shutdown` turns true; then sends what is left in the spool
    /// while connected (the caller bounds that drain with a timeout).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_START;
        let mut index = 0usize;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let position = index % self.collectors.len();
            let url = self.collectors[position].clone();
            let ended = match self.session(&url, position, &mut shutdown).await {
                Ok(()) => return,
                Err(ended) => ended,
            };
            match &ended.error {
                SessionError::Failback => tracing::info!(collector = %url, "returning to the first collector"),
                SessionError::Connect(_) => {
                    tracing::warn!(collector = %url, error = %ended.error, "collector unreachable")
                }
                e => {
                    tracing::warn!(collector = %url, error = %e, progress = ended.progress, "stream to collector ended")
                }
            }
            let (next, pause, next_backoff) = next_attempt(index, self.collectors.len(), &ended, backoff);
            index = next;
            backoff = next_backoff;
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(jittered(pause)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// One stream. Err says whether any batch was acknowledged on it.
    async fn session(&self, url: &str, position: usize, shutdown: &mut watch::Receiver<bool>) -> Result<(), Ended> {
        let fail = |error| Ended { progress: false, error };
        let channel = connect(url, self.tls.as_ref()).await.map_err(|e| fail(SessionError::Connect(e)))?;
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(WINDOW + 1);
        let hello = self.hello.borrow().clone();
        let min_interval_ms = hello.min_interval_ms;
        let hello = pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) };
        tx.send(hello).await.map_err(|_| fail(SessionError::Protocol("stream closed".into())))?;
        let mut client = IngestClient::new(channel);
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| fail(SessionError::Stream(s)))?
            .into_inner();
        let welcome = tokio::time::timeout(self.ack_timeout, inbound.message())
            .await
            .map_err(|_| fail(SessionError::AckTimeout(self.ack_timeout)))?
            .map_err(|s| fail(SessionError::Stream(s)))?;
        match welcome {
            Some(pb::CollectorMessage { body: Some(pb::collector_message::Body::Welcome(w)) }) => {
                tracing::info!(collector = %url, stored_up_to = w.last_seq, pending = self.spool.pending(), "connected to collector");
                self.cadence.set_announced(min_interval_ms);
                if let Err(e) = self.spool.skip_past(w.last_seq) {
                    // A broken spool assigns no numbers until it is reopened; the next
                    // session's welcome applies the rule then.
                    if !self.spool.is_broken() {
                        return Err(fail(SessionError::Spool(e)));
                    }
                }
            }
            other => {
                return Err(fail(SessionError::Protocol(format!("expected a welcome, got {other:?}"))));
            }
        }
        let failback = (position != 0).then(|| tokio::time::Instant::now() + self.failback_after);
        let mut progress = false;
        self.stream_batches(tx, inbound, shutdown, failback, &mut progress)
            .await
            .map_err(|error| Ended { progress, error })
    }

    async fn stream_batches(
        &self,
        tx: mpsc::Sender<pb::AgentMessage>,
        mut inbound: tonic::Streaming<pb::CollectorMessage>,
        shutdown: &mut watch::Receiver<bool>,
        failback: Option<tokio::time::Instant>,
        progress: &mut bool,
    ) -> Result<(), SessionError> {
        let mut last_sent = 0u64;
        let mut in_flight = BTreeSet::new();
        // Acknowledged, but the spool could not record it (broken): retried once it works.
        let mut unrecorded: Vec<u64> = Vec::new();
        let mut status = self.status.clone();
        // The trouble as it stands goes first; later changes as they come.
        status.mark_changed();
        let mut status_open = true;
        let mut draining = *shutdown.borrow();
        // When the oldest unacknowledged batch must have been acknowledged.
        let mut ack_deadline = tokio::time::Instant::now() + self.ack_timeout;
        loop {
            if !unrecorded.is_empty() && !self.spool.is_broken() {
                for seq in std::mem::take(&mut unrecorded) {
                    if self.spool.ack(seq).is_err() {
                        unrecorded.push(seq);
                    }
                }
            }
            while in_flight.len() < WINDOW {
                let next = match self.spool.next_after(last_sent) {
                    Ok(next) => next,
                    // Being reopened: what it holds is sent once it is back.
                    Err(_) if self.spool.is_broken() => None,
                    Err(e) => return Err(e.into()),
                };
                let Some((seq, batch)) = next else {
                    break;
                };
                if in_flight.is_empty() {
                    ack_deadline = tokio::time::Instant::now() + self.ack_timeout;
                }
                let msg = pb::AgentMessage { body: Some(pb::agent_message::Body::Batch(batch)) };
                tx.send(msg).await.map_err(|_| SessionError::Protocol("stream closed while sending".into()))?;
                in_flight.insert(seq);
                last_sent = seq;
            }
            if draining && in_flight.is_empty() {
                return Ok(());
            }
            tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(pb::CollectorMessage { body: Some(pb::collector_message::Body::Ack(ack)) }) => {
                        if let Err(e) = self.spool.ack(ack.seq) {
                            // Recorded once the spool works again (a resend meanwhile is
                            // acknowledged by the collector without storing it twice).
                            if !self.spool.is_broken() {
                                return Err(e.into());
                            }
                            unrecorded.push(ack.seq);
                        }
                        in_flight.remove(&ack.seq);
                        *progress = true;
                        ack_deadline = tokio::time::Instant::now() + self.ack_timeout;
                    }
                    Some(_) => {}
                    None => return Err(SessionError::Protocol("collector closed the stream".into())),
                },
                _ = self.wake.notified() => {}
                changed = status.changed(), if status_open => {
                    let current = status.borrow_and_update().clone();
                    match (changed, current) {
                        (Ok(()), Some(s)) => {
                            let msg = pb::AgentMessage { body: Some(pb::agent_message::Body::Status(s)) };
                            tx.send(msg).await.map_err(|_| SessionError::Protocol("stream closed while sending".into()))?;
                        }
                        // The all-clear travels in a spooled batch.
                        (Ok(()), None) => {}
                        // The batcher has ended (the agent stops): nothing more to report.
                        (Err(_), _) => status_open = false,
                    }
                }
                _ = tokio::time::sleep_until(ack_deadline), if !in_flight.is_empty() => {
                    return Err(SessionError::AckTimeout(self.ack_timeout));
                }
                _ = tokio::time::sleep_until(failback.unwrap_or_else(tokio::time::Instant::now)),
                    if failback.is_some() && !draining => {
                    return Err(SessionError::Failback);
                }
                r = shutdown.changed(), if !draining => {
                    // Shutting down: keep streaming until the spool is empty.
                    draining = true;
                    if r.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Opens a channel to one collector URL, with TLS for `https://`.
pub async fn connect(url: &str, tls: Option<&TlsConfig>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{url}: invalid URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let mut cfg = ClientTlsConfig::new();
        // The collector's CA when given (and only it); else the public web roots, for a
        // collector whose certificate comes from a public CA.
        match tls.and_then(|t| t.ca_file.as_ref()) {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| format!("tls.ca_file {}: {e}", ca.display()))?;
                cfg = cfg.ca_certificate(Certificate::from_pem(pem));
            }
            None => cfg = cfg.with_webpki_roots(),
        }
        if let Some(tls) = tls {
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                let c = std::fs::read(cert).map_err(|e| format!("tls.cert_file {}: {e}", cert.display()))?;
                let k = std::fs::read(key).map_err(|e| format!("tls.key_file {}: {e}", key.display()))?;
                cfg = cfg.identity(Identity::from_pem(c, k));
            }
            if let Some(name) = &tls.server_name {
                cfg = cfg.domain_name(name.clone());
            }
        }
        endpoint = endpoint.tls_config(cfg).map_err(|e| format!("{url}: TLS setup: {e}"))?;
    }
    endpoint.connect().await.map_err(|e| format!("{url}: {}", crate::errors::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(progress: bool, error: SessionError) -> Ended {
        Ended { progress, error }
    }

    #[test]
    fn only_acknowledged_progress_resets_the_backoff() {
        let b = Duration::from_secs(8);
        // A welcome without acks (the collector cannot store): the backoff keeps growing.
        let (next, pause, after) = next_attempt(0, 1, &ended(false, SessionError::Protocol("x".into())), b);
        assert_eq!((next, pause, after), (1, b, Duration::from_secs(16)));
        // Acks, then the stream broke (the collector restarted): same collector, backoff reset.
        let (next, pause, after) = next_attempt(0, 1, &ended(true, SessionError::Protocol("x".into())), b);
        assert_eq!((next, pause, after), (0, BACKOFF_START, BACKOFF_START * 2));
    }

    #[test]
    fn failing_collectors_are_left_for_the_next_with_a_pause_and_a_full_round_backs_off() {
        let b = Duration::from_secs(2);
        let timeout = || ended(false, SessionError::AckTimeout(Duration::from_secs(30)));
        let (next, pause, after) = next_attempt(0, 2, &timeout(), b);
        assert_eq!((next, pause, after), (1, BETWEEN_COLLECTORS, b), "no hot loop between two collectors");
        let (next, pause, after) = next_attempt(1, 2, &timeout(), b);
        assert_eq!((next % 2, pause, after), (0, b, b * 2), "a full round waits the backoff");
        // Progress on the second collector keeps the agent there.
        let (next, _, _) = next_attempt(1, 2, &ended(true, SessionError::Protocol("x".into())), b);
        assert_eq!(next % 2, 1);
    }

    #[test]
    fn failback_goes_to_the_first_collector_at_once() {
        let (next, pause, _) = next_attempt(3, 2, &ended(true, SessionError::Failback), Duration::from_secs(4));
        assert_eq!((next, pause), (0, Duration::ZERO));
    }

    #[test]
    fn keepalive_only_while_the_stream_announced_a_shorter_interval_than_the_probes_have() {
        // Nothing announced yet, or the probes are at least as fast as announced: none.
        assert_eq!(keepalive(0, 30_000), None);
        assert_eq!(keepalive(10_000, 10_000), None);
        assert_eq!(keepalive(30_000, 10_000), None);
        // A reload removed the 10 s check: a batch at least every 10 s until the next hello.
        assert_eq!(keepalive(10_000, 30_000), Some(Duration::from_secs(10)));
        // The collector counts anything under 1 s as 1 s.
        assert_eq!(keepalive(200, 30_000), Some(Duration::from_secs(1)));
        let cadence = Cadence::new(Duration::from_secs(30));
        assert_eq!(cadence.keepalive(), None);
        cadence.set_announced(10_000);
        assert_eq!(cadence.keepalive(), Some(Duration::from_secs(10)));
        cadence.set_configured(Duration::from_secs(5));
        assert_eq!(cadence.keepalive(), None);
    }

    #[test]
    fn backoff_is_capped() {
        let (_, _, after) = next_attempt(0, 1, &ended(false, SessionError::Connect("x".into())), BACKOFF_MAX);
        assert_eq!(after, BACKOFF_MAX);
    }
}
