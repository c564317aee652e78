//! The gRPC ingest service: one bidirectional stream per agent.
//!
//! hello → welcome; then for each batch: store (group commit) → ack.
//! When the collector verifies client certificates, the host id in the hello
//! must be the certificate's subject common name: an agent cannot report for
//! another host.

use std::collections::VecDeque;
use std::sync::Arc;

use pikett_proto::received::ReceivedBatch;
use pikett_proto::rx;
use pikett_proto::rx::ingest_server::Ingest;
use pikett_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::services::batches::{BatchStore, Sender, Stored, WriteRequest};
use crate::services::identity::{CertVerdict, IdentityService};
use crate::services::metrics::{Metrics, ReasonLabel};

/// Longest `agent_version` and capability name kept from a hello; more capabilities than
/// this are dropped.
const MAX_FIELD: usize = 64;
/// A stream that sends no hello within this long is closed (a client that opens streams
/// and sends nothing holds nothing for long).
const HELLO_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
const MAX_CAPABILITIES: usize = 32;

pub struct IngestService {
    pub store: Arc<dyn BatchStore>,
    pub identity: Arc<IdentityService>,
    pub writer: mpsc::Sender<WriteRequest>,
    pub metrics: Arc<Metrics>,
    pub require_client_cert: bool,
    pub latest: Arc<crate::services::latest::LatestSamples>,
    /// Turns true when the collector stops: every stream then ends (after the answers to
    /// the batches already read), so the process exits on time instead of waiting for
    /// the agents to hang up.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Batches one stream may have with the writer, unanswered, before it reads no more.
const MAX_PENDING: usize = 256;

/// Why a stream's reading ended.
enum End {
    /// The agent closed it, or it broke: answer what is pending.
    Finished,
    /// Answer what is pending, then refuse with this status.
    Refuse(Status),
    /// The agent no longer takes answers.
    Gone,
}

/// Sends the answer for batch `seq`: its ack once durable, or an error that ends the stream.
/// `Err` when the stream is over.
async fn answer(
    out_tx: &mpsc::Sender<Result<pb::CollectorMessage, Status>>,
    seq: u64,
    reply: Result<Result<Stored, String>, oneshot::error::RecvError>,
) -> Result<(), ()> {
    let msg = match reply {
        Ok(Ok(_)) => Ok(pb::CollectorMessage { body: Some(pb::collector_message::Body::Ack(pb::Ack { seq })) }),
        Ok(Err(e)) => Err(Status::unavailable(format!("cannot store batch {seq}: {e}"))),
        Err(_) => Err(Status::unavailable("the collector is shutting down")),
    };
    let failed = msg.is_err();
    if out_tx.send(msg).await.is_err() || failed { Err(()) } else { Ok(()) }
}

/// Counts a stream as connected for as long as it lives.
struct StreamGuard(Arc<Metrics>);
impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.dec();
    }
}

/// Under protocol 2 a check result must say its state: the zero value is refused, so a
/// client that forgot the field learns it instead of reporting healthy.
fn missing_status(version: u32, checks: &[pb::CheckResult]) -> Option<String> {
    if version < 2 {
        return None;
    }
    let c = checks.iter().find(|c| c.status == pb::CheckStatus::Unspecified as i32)?;
    Some(format!(
        "check result {:?} has no status (CHECK_STATUS_UNSPECIFIED): protocol version 2 requires CheckResult.status",
        c.name
    ))
}
fn reject(metrics: &Metrics, reason: &str, status: Status) -> Status {
    metrics.rejected_streams_total.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    tracing::warn!(reason, error = %status.message(), "agent stream refused");
    status
}

/// Whether batch `seq` breaks the sequence rules of a stream whose last batch was `previous`:
/// the reason (metric label) and the message. Seqs start at 1, rise on a stream, and fit in
/// 63 bits: PostgreSQL stores them as `bigint`, and a larger one would be acknowledged but
/// stored negative, below every cursor, so never evaluated (refused on every backend alike).
fn sequence_refusal(previous: Option<u64>, seq: u64) -> Option<(&'static str, String)> {
    match previous {
        _ if seq == 0 => Some(("seq_zero", "batch with sequence number 0 (they start at 1)".to_string())),
        _ if seq > i64::MAX as u64 => Some((
            "seq_too_large",
            format!("batch with sequence number {seq}: sequence numbers must be at most {} (2^63 - 1)", i64::MAX),
        )),
        Some(p) if seq <= p => Some(("seq_backwards", format!("batch {seq} after batch {p} on the same stream"))),
        _ => None,
    }
}

/// A free-form field from an agent, cut to `max` characters of printable text.
fn bounded(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReceiverStream<Result<pb::CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<rx::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer_cert = request.peer_certs().and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
        let peer_cn = peer_cert.as_deref().and_then(crate::services::pki::common_name);
        let request_serial = peer_cert.as_deref().and_then(crate::services::pki::serial_of);
        // Without the certificate the stream would be refused after the hello anyway: refuse
        // before reading anything.
        if self.require_client_cert && peer_cn.is_none() {
            return Err(reject(
                &self.metrics,
                "no_client_cert",
                Status::unauthenticated("a client certificate signed by the collector's CA is required"),
            ));
        }
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_DEADLINE, inbound.message()).await {
            Ok(first) => first?,
            Err(_) => {
                let status = Status::deadline_exceeded(format!("no hello within {} s", HELLO_DEADLINE.as_secs()));
                return Err(reject(&self.metrics, "no_hello_in_time", status));
            }
        };
        let hello = match first {
            Some(rx::AgentMessage { body: Some(rx::agent_message::Body::Hello(h)) }) => h,
            _ => {
                return Err(reject(
                    &self.metrics,
                    "no_hello",
                    Status::invalid_argument("the first message must be a hello"),
                ));
            }
        };
        let version = hello.protocol_version;
        if !(pikett_proto::OLDEST_PROTOCOL_VERSION..=pikett_proto::PROTOCOL_VERSION).contains(&version) {
            return Err(reject(
                &self.metrics,
                "protocol_version",
                Status::failed_precondition(format!(
                    "protocol version {version} is not supported (this collector speaks {} to {})",
                    pikett_proto::OLDEST_PROTOCOL_VERSION,
                    pikett_proto::PROTOCOL_VERSION
                )),
            ));
        }
        if let Err(e) = pikett_core::hosts::check_host_id(&hello.host_id) {
            return Err(reject(&self.metrics, "host_id", Status::invalid_argument(e)));
        }
        if self.require_client_cert {
            match &peer_cn {
                Some(cn) if *cn == hello.host_id => {}
                Some(cn) => {
                    return Err(reject(
                        &self.metrics,
                        "host_id_mismatch",
                        Status::permission_denied(format!(
                            "host_id {:?} does not match the client certificate's subject {cn:?}",
                            hello.host_id
                        )),
                    ));
                }
                None => {
                    return Err(reject(
                        &self.metrics,
                        "no_client_cert",
                        Status::unauthenticated("a client certificate signed by the collector's CA is required"),
                    ));
                }
            }
        }
        // The collector owns identity: an enrolled host's customer is its enrollment's, a
        // known host's the one it was first seen with; the agent's word counts only for a
        // host never seen before (certificates made by hand, before enrollment).
        let serial = request_serial.as_deref();
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let (customer, source) = match self.identity.check(&hello.host_id, serial, now_ms) {
            CertVerdict::Refused(why) if self.require_client_cert || why.contains("revoked") => {
                return Err(reject(&self.metrics, "certificate_refused", Status::permission_denied(why)));
            }
            CertVerdict::Accepted { customer } => (customer, "its enrollment"),
            _ => match self.identity.identity(&hello.host_id) {
                Some(id) => (id.customer, "its enrollment"),
                None => match self.store.host(&hello.host_id) {
                    Some(known) if !known.customer.is_empty() => (known.customer, "when it was first seen"),
                    _ => (hello.customer.clone(), "the agent"),
                },
            },
        };
        if !hello.customer.is_empty() && hello.customer != customer {
            let status = Status::permission_denied(format!(
                "host {} belongs to customer {customer:?} ({source}); the agent says {:?}: fix `customer` in the \
                 agent's config, or enroll the host again for the other customer",
                hello.host_id, hello.customer
            ));
            return Err(reject(&self.metrics, "customer_mismatch", status));
        }
        let sender = Arc::new(Sender {
            host_id: hello.host_id.clone(),
            customer,
            agent_version: bounded(&hello.agent_version, MAX_FIELD),
            capabilities: hello.capabilities.iter().take(MAX_CAPABILITIES).map(|c| bounded(c, MAX_FIELD)).collect(),
            // 1 s to 1 day: the host timeout is 3× this.
            min_interval_ms: if hello.min_interval_ms == 0 {
                0
            } else {
                hello.min_interval_ms.clamp(1_000, 86_400_000)
            },
            spool_epoch: hello.spool_epoch,
        });
        // What is stored from this spool (another epoch's numbers mean nothing to it), read
        // from the store itself: with collectors sharing one, another may have stored more
        // since. Unknown, the stream is refused rather than guessed (the agent retries).
        let last_seq = match self.store.stored_up_to(&sender.host_id, sender.spool_epoch).await {
            Ok(seq) => seq,
            Err(e) => {
                let status = Status::unavailable(format!(
                    "cannot read what is stored for host {} (spool epoch {}): {e}; retry later",
                    sender.host_id, sender.spool_epoch
                ));
                return Err(reject(&self.metrics, "store_unavailable", status));
            }
        };
        tracing::info!(
            host_id = %sender.host_id,
            agent_version = %sender.agent_version,
            spool_epoch = sender.spool_epoch,
            last_seq,
            "agent connected"
        );

        let (out_tx, out_rx) = mpsc::channel::<Result<pb::CollectorMessage, Status>>(256);
        let welcome = pb::Welcome { protocol_version: version, last_seq };
        let _ =
            out_tx.send(Ok(pb::CollectorMessage { body: Some(pb::collector_message::Body::Welcome(welcome)) })).await;

        // One task per stream: batches → writer, and durable replies → acks, in order (a
        // task of its own for the acks cost a wake-up more per batch).
        let writer = self.writer.clone();
        let latest = self.latest.clone();
        self.metrics.streams.inc();
        let guard = StreamGuard(self.metrics.clone());
        let host_id = sender.host_id.clone();
        let metrics = self.metrics.clone();
        let (identity, require_client_cert) = (self.identity.clone(), self.require_client_cert);
        let stream_serial = request_serial.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            // The sequence rules of one stream (ingest.proto): no second hello, no seq 0,
            // increasing numbers. A gap is allowed (the agent dropped batches) but logged.
            let mut previous: Option<u64> = None;
            // Fault injection (feature `failpoints`, `FAILPOINTS=ingest-hold-acks=return`): a
            // collector that accepts streams and stores batches but never acknowledges them.
            #[cfg(feature = "failpoints")]
            let hold_acks = fail::eval("ingest-hold-acks", |_| ()).is_some();
            #[cfg(not(feature = "failpoints"))]
            let hold_acks = false;
            // Batches handed to the writer, oldest first, with their durable replies to come.
            let mut pending: VecDeque<(u64, oneshot::Receiver<Result<Stored, String>>)> = VecDeque::new();
            let end = loop {
                let (answer_next, read_next) = (!hold_acks && !pending.is_empty(), pending.len() < MAX_PENDING);
                let next = tokio::select! {
                    biased;
                    reply = async {
                        match pending.front_mut() {
                            Some((_, reply)) => reply.await,
                            None => std::future::pending().await,
                        }
                    }, if answer_next => {
                        let Some((seq, _)) = pending.pop_front() else { continue };
                        match answer(&out_tx, seq, reply).await {
                            Ok(()) => continue,
                            Err(()) => break End::Gone,
                        }
                    }
                    _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => {
                        // What was read is still answered; then the agent is told to go.
                        let status = Status::unavailable("the collector is shutting down; reconnect later");
                        tracing::info!(host_id = %host_id, "collector shutting down: stream ended");
                        break End::Refuse(status);
                    }
                    next = inbound.message(), if read_next => next,
                };
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break End::Finished,
                    // A message over the size limit: tell the agent why (after the answers to
                    // the batches before it), instead of just ending the stream.
                    Err(e) if e.code() == tonic::Code::OutOfRange => {
                        break End::Refuse(reject(&metrics, "message_too_large", e));
                    }
                    Err(e) => {
                        tracing::info!(host_id = %host_id, error = %e, "agent stream ended");
                        break End::Finished;
                    }
                };
                let checks = match &msg.body {
                    Some(rx::agent_message::Body::Batch(b)) => &b.head().checks[..],
                    Some(rx::agent_message::Body::Status(s)) => &s.checks[..],
                    _ => &[],
                };
                if let Some(message) = missing_status(version, checks) {
                    let status = Status::invalid_argument(message);
                    break End::Refuse(reject(&metrics, "check_without_status", status));
                }
                let batch = match msg.body {
                    Some(rx::agent_message::Body::Batch(batch)) => batch,
                    Some(rx::agent_message::Body::Status(status)) => {
                        // Not spooled, not acknowledged: evaluated with the next group.
                        tracing::warn!(host_id = %host_id, checks = ?status.checks.iter().map(|c| (&c.name, &c.summary)).collect::<Vec<_>>(), "agent reports trouble it cannot spool");
                        let (reply, _) = oneshot::channel();
                        let batch =
                            ReceivedBatch::from_batch(&pb::Batch { checks: status.checks, ..Default::default() });
                        let req =
                            WriteRequest { sender: sender.clone(), batch, status: true, series_over_limit: 0, reply };
                        if writer.send(req).await.is_err() {
                            break End::Finished;
                        }
                        continue;
                    }
                    Some(rx::agent_message::Body::Hello(_)) => {
                        let status = Status::invalid_argument("a second hello on one stream");
                        break End::Refuse(reject(&metrics, "second_hello", status));
                    }
                    None => continue,
                };
                // A host revoked while its stream is open is cut off at its next batch.
                let now_ms = jiff::Timestamp::now().as_millisecond();
                if let CertVerdict::Refused(why) = identity.check(&host_id, stream_serial.as_deref(), now_ms)
                    && (require_client_cert || why.contains("revoked"))
                {
                    let status = Status::permission_denied(why);
                    break End::Refuse(reject(&metrics, "certificate_refused", status));
                }
                let mut batch = batch;
                let refused = match batch.retain_checks(|c| pikett_core::faults::valid_check_name(&c.name)) {
                    Ok(n) => n,
                    Err(e) => {
                        let status = Status::invalid_argument(format!("batch {}: {e}", batch.head().seq));
                        break End::Refuse(reject(&metrics, "malformed_batch", status));
                    }
                };
                if refused > 0 {
                    let n = refused as u64;
                    metrics.invalid_checks_total.inc_by(n);
                    tracing::warn!(host_id = %host_id, ignored = n, "check results with invalid names ignored (control characters, empty, too long)");
                }
                let seq = batch.head().seq;
                let refusal = sequence_refusal(previous, seq);
                if let Some((reason, message)) = refusal {
                    let status = Status::invalid_argument(message);
                    break End::Refuse(reject(&metrics, reason, status));
                }
                if let Some(p) = previous.filter(|p| seq > p + 1) {
                    metrics.sequence_gaps_total.inc();
                    tracing::warn!(host_id = %host_id, after = p, next = seq, "sequence gap: the agent dropped batches");
                }
                previous = Some(seq);
                let (reply, rx) = oneshot::channel();
                let now_ms = jiff::Timestamp::now().as_millisecond();
                let series_over_limit = latest.update(&sender.host_id, &sender.customer, &batch, now_ms);
                let req = WriteRequest { sender: sender.clone(), batch, status: false, series_over_limit, reply };
                if writer.send(req).await.is_err() {
                    break End::Finished;
                }
                pending.push_back((seq, rx));
            };
            if matches!(end, End::Gone) || hold_acks {
                // `out_tx` lives until here: a held stream stays open until the agent goes.
                if hold_acks {
                    let _ = out_tx.closed().await;
                }
                return;
            }
            // What was read is answered, then a refusal says why the stream ends.
            for (seq, reply) in pending {
                if answer(&out_tx, seq, reply.await).await.is_err() {
                    return;
                }
            }
            if let End::Refuse(status) = end {
                let _ = out_tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_start_at_one_rise_and_fit_in_63_bits() {
        assert_eq!(sequence_refusal(None, 0).map(|r| r.0), Some("seq_zero"));
        assert_eq!(sequence_refusal(Some(6), 3).map(|r| r.0), Some("seq_backwards"));
        assert_eq!(sequence_refusal(None, 1), None);
        assert_eq!(sequence_refusal(Some(1), 4), None, "a gap is allowed");
        let max = i64::MAX as u64;
        assert_eq!(sequence_refusal(Some(max - 1), max), None);
        for seq in [max + 1, u64::MAX] {
            let (reason, message) = sequence_refusal(None, seq).expect("a seq above 2^63 - 1 was accepted");
            assert_eq!(reason, "seq_too_large");
            assert!(message.contains(&seq.to_string()) && message.contains("at most"), "{message}");
        }
        // Also after an earlier batch (not reported as a step backwards).
        assert_eq!(sequence_refusal(Some(max), u64::MAX).map(|r| r.0), Some("seq_too_large"));
    }
}
