//! The uplink: streams spooled batches to the first collector that answers,
//! deletes them from the spool when acknowledged, and reconnects with
//! jittered exponential backoff, failing over across the `collectors` list.

use std::collections::BTreeSet;
use std::sync::Arc;
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

pub struct Uplink {
    pub collectors: Vec<String>,
    pub tls: Option<TlsConfig>,
    pub hello: pb::Hello,
    pub spool: Arc<Spool>,
    /// Signalled when a new batch is spooled.
    pub wake: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Connect(String),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

/// Full-jitter backoff: a random delay in [d/2, d], d doubling up to the max.
fn jittered(d: Duration) -> Duration {
    let lo = d.as_millis() as u64 / 2;
    Duration::from_millis(rand::random_range(lo..=d.as_millis() as u64))
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
            let url = self.collectors[index % self.collectors.len()].clone();
            match self.session(&url, &mut shutdown).await {
                Ok(()) => return,
                Err((established, e)) => {
                    if established {
                        backoff = BACKOFF_START;
                        tracing::warn!(collector = %url, error = %e, "stream to collector ended; reconnecting");
                    } else {
                        tracing::warn!(collector = %url, error = %e, "collector unreachable");
                        index += 1;
                    }
                }
            }
            // Sleep before the next attempt only once every collector has been tried.
            if index.is_multiple_of(self.collectors.len()) || self.collectors.len() == 1 {
                let delay = jittered(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// One stream. Err carries whether the stream had been established (welcome received).
    async fn session(&self, url: &str, shutdown: &mut watch::Receiver<bool>) -> Result<(), (bool, SessionError)> {
        let channel = connect(url, self.tls.as_ref()).await.map_err(|e| (false, SessionError::Connect(e)))?;
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(WINDOW + 1);
        let hello = pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(self.hello.clone())) };
        tx.send(hello).await.map_err(|_| (false, SessionError::Protocol("stream closed".into())))?;
        let mut client = IngestClient::new(channel);
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| (false, SessionError::Stream(s)))?
            .into_inner();
        match inbound.message().await.map_err(|s| (false, SessionError::Stream(s)))? {
            Some(pb::CollectorMessage { body: Some(pb::collector_message::Body::Welcome(w)) }) => {
                tracing::info!(collector = %url, stored_up_to = w.last_seq, pending = self.spool.pending(), "connected to collector");
                self.spool.skip_past(w.last_seq).map_err(|e| (false, SessionError::Spool(e)))?;
            }
            other => {
                return Err((false, SessionError::Protocol(format!("expected a welcome, got {other:?}"))));
            }
        }
        self.stream_batches(tx, inbound, shutdown).await.map_err(|e| (true, e))
    }

    async fn stream_batches(
        &self,
        tx: mpsc::Sender<pb::AgentMessage>,
        mut inbound: tonic::Streaming<pb::CollectorMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let mut last_sent = 0u64;
        let mut in_flight = BTreeSet::new();
        let mut draining = *shutdown.borrow();
        loop {
            while in_flight.len() < WINDOW {
                let Some((seq, batch)) = self.spool.next_after(last_sent)? else {
                    break;
                };
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
                        self.spool.ack(ack.seq)?;
                        in_flight.remove(&ack.seq);
                    }
                    Some(_) => {}
                    None => return Err(SessionError::Protocol("collector closed the stream".into())),
                },
                _ = self.wake.notified() => {}
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
        if let Some(tls) = tls {
            if let Some(ca) = &tls.ca_file {
                let pem = std::fs::read(ca).map_err(|e| format!("tls.ca_file {}: {e}", ca.display()))?;
                cfg = cfg.ca_certificate(Certificate::from_pem(pem));
            }
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
