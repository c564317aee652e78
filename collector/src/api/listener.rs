//! The gRPC port's TLS: the handshake happens here, before tonic sees the connection, so
//! that a client that connects and never finishes it holds nothing for long.
//!
//! - A handshake must finish within [`HANDSHAKE_DEADLINE`].
//! - One peer address may have at most [`MAX_PENDING_PER_PEER`] handshakes under way, and
//!   all peers together [`MAX_PENDING`]; connections beyond that are closed at once.
//! - Client certificates are optional at this layer (the staff CLI has none); the ingest
//!   service insists on one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::api::read_ahead::ReadAhead;

pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
pub const MAX_PENDING_PER_PEER: usize = 16;
pub const MAX_PENDING: usize = 1024;

/// The server side of TLS from the `[tls]` files.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("tls.cert_file {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert_file {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("tls.key_file {}", key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).with_context(|| format!("tls.client_ca_file {}", ca.display()))?
            {
                roots
                    .add(c.with_context(|| format!("tls.client_ca_file {}", ca.display()))?)
                    .with_context(|| format!("tls.client_ca_file {}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .context("tls.client_ca_file")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).context("tls.cert_file / tls.key_file")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Handshakes under way, per peer.
#[derive(Default)]
struct Pending {
    per_peer: HashMap<IpAddr, usize>,
    total: usize,
}

struct Slot {
    pending: Arc<Mutex<Pending>>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.total = p.total.saturating_sub(1);
        if let Some(n) = p.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                p.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Whom a limit counts against: an IPv4 address, or an IPv6 /64 (one host usually has a
/// whole /64, so counting single IPv6 addresses would limit nothing).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(seg))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
        v4 => v4,
    }
}

fn take_slot(pending: &Arc<Mutex<Pending>>, peer: IpAddr) -> Option<Slot> {
    let peer = peer_key(peer);
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    let mine = p.per_peer.get(&peer).copied().unwrap_or(0);
    if mine >= MAX_PENDING_PER_PEER || p.total >= MAX_PENDING {
        return None;
    }
    *p.per_peer.entry(peer).or_default() += 1;
    p.total += 1;
    Some(Slot { pending: pending.clone(), peer })
}

/// Accepts connections on `listener`, does their TLS handshake under the limits above and
/// hands the finished ones to the gRPC server.
pub fn accept(
    listener: TcpListener,
    config: rustls::ServerConfig,
    on_refused: impl Fn(&'static str) + Send + Sync + 'static,
) -> mpsc::Receiver<Result<TlsStream<ReadAhead>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(256);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let pending = Arc::new(Mutex::new(Pending::default()));
    let on_refused = Arc::new(on_refused);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, typically: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = take_slot(&pending, peer.ip()) else {
                on_refused("too_many_handshakes");
                tracing::debug!(peer = %peer, "too many TLS handshakes under way; connection closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, on_refused) = (acceptor.clone(), tx.clone(), on_refused.clone());
            tokio::spawn(async move {
                let done = tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(ReadAhead::new(tcp))).await;
                drop(slot);
                match done {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        on_refused("tls_handshake");
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        on_refused("tls_handshake_timeout");
                        tracing::debug!(peer = %peer, "no TLS handshake within the deadline; connection closed");
                    }
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_handshakes_are_limited_per_peer_and_given_back() {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let slots: Vec<Slot> = (0..MAX_PENDING_PER_PEER).map(|_| take_slot(&pending, a).unwrap()).collect();
        assert!(take_slot(&pending, a).is_none(), "one peer took more than its share");
        assert!(take_slot(&pending, b).is_some(), "another peer was refused");
        drop(slots);
        assert!(take_slot(&pending, a).is_some(), "finished handshakes were not given back");
        assert_eq!(pending.lock().unwrap().per_peer.get(&a).copied(), None);
    }

    #[test]
    fn ipv6_peers_count_per_slash_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(peer_key(one), peer_key(other));
        assert_ne!(peer_key(one), peer_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(peer_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
