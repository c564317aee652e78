//! Real receivers for the notification tests: HTTP gateways (axum on 127.0.0.1) that record
//! every request and answer a status the test can change, and notifications to send.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pikett_collector::notify::{ChannelKind, Notification, NotificationKind};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One request as the gateway saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

#[derive(Clone)]
struct GatewayState {
    requests: Arc<Mutex<Vec<Recorded>>>,
    status: Arc<AtomicU16>,
}

/// An HTTP gateway on 127.0.0.1 answering `POST /send` with a settable status.
pub struct Gateway {
    pub addr: SocketAddr,
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// The URL as receipts and logs show it (secrets in paths are never shown).
    pub fn redacted_url(&self) -> String {
        format!("{}://{}/…", self.url.split("://").next().unwrap_or("http"), self.addr)
    }

    pub async fn start(status: u16) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, status)
    }

    /// Starts on a given address (a gateway "coming back" on the port it had).
    pub async fn start_on(addr: SocketAddr, status: u16) -> Gateway {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, status)
    }

    fn serve(listener: tokio::net::TcpListener, status: u16) -> Gateway {
        let addr = listener.local_addr().unwrap();
        let state =
            GatewayState { requests: Arc::new(Mutex::new(Vec::new())), status: Arc::new(AtomicU16::new(status)) };
        let app = Router::new().route("/send", post(record)).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Gateway { addr, url: format!("http://{addr}/send"), requests: state.requests, status: state.status, task }
    }

    /// An HTTPS gateway on 127.0.0.1 with the certificate and key in these PEM files.
    pub async fn start_tls(status: u16, cert: &Path, key: &Path) -> Gateway {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state =
            GatewayState { requests: Arc::new(Mutex::new(Vec::new())), status: Arc::new(AtomicU16::new(status)) };
        let server_state = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = server_state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let status = record(State(state), parts.headers, body).await;
                            let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        Gateway { addr, url: format!("https://{addr}/send"), requests: state.requests, status: state.status, task }
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(state): State<GatewayState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    state.requests.lock().unwrap().push(Recorded { headers, body, at: std::time::Instant::now() });
    let status = state.status.load(Ordering::SeqCst);
    StatusCode::from_u16(status).unwrap()
}

/// A test CA and a certificate for 127.0.0.1 in `dir`: (ca.pem, cert.pem, key.pem).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pikett test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

/// A loopback address where nothing listens (connections are refused).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn dead_url() -> String {
    format!("http://{}/send", dead_addr())
}

pub fn notification(id: &str, channel: ChannelKind, to: &str) -> Notification {
    Notification {
        id: id.into(),
        fault_id: "F42".into(),
        kind: NotificationKind::Alarm,
        channel,
        to: to.into(),
        subject: String::new(),
        text: String::new(),
        host: "web1".into(),
        check: "http/shop-frontend".into(),
        severity: "critical".into(),
        summary: "HTTP 500 \"Internal Server Error\"".into(),
        customer: "acme".into(),
        emergency: false,
        fault_opened_at: Some("2026-11-23T02:58:00Z".parse().unwrap()),
        fault_resolved_at: None,
        created_at: jiff::Timestamp::now(),
    }
}

/// Polls `cond` every 10 ms until it holds or `secs` pass.
pub async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    cond()
}
