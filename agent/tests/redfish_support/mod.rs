//! A real HTTPS Redfish server for tests: serves the DMTF-mockup fixtures, sessions, `$expand`, and injected faults.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pikett_agent::probes::redfish::RedfishConfig;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the fixture sets live. The ONE place to change when the fixtures move
/// (main repo: `<repo>/tests/fixtures/redfish`, i.e. `../tests/fixtures/redfish` from `agent/`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/redfish"))
}

/// The Dell R750 iDRAC9 set.
pub const R750: &str = "dell-r750-idrac9-6.00.30.00";

/// Every fixture set (each directory holding `redfish/v1/index.json`).
pub fn fixture_sets() -> Vec<String> {
    let mut sets: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("redfish/v1/index.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    sets.sort();
    sets
}

/// The fixture body of `GET path` in `set`, parsed.
pub fn fixture_json(set: &str, path: &str) -> Value {
    let file = fixture_file(set, path);
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn fixture_file(set: &str, path: &str) -> PathBuf {
    let rel = path.split('#').next().unwrap().trim_matches('/');
    fixtures_dir().join(set).join(rel).join("index.json")
}

/// What a path answers instead of its fixture file.
#[derive(Clone, Debug)]
pub enum Override {
    /// This JSON (an edited copy of the fixture).
    Json(Value),
    /// This status and body.
    Status(u16, String),
    /// These raw bytes with status 200 (malformed JSON, ...).
    Raw(Vec<u8>),
    /// Sleep this long, then answer normally.
    Stall(Duration),
    /// A 200 answer of this many bytes, streamed without Content-Length.
    Huge(usize),
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub token: Option<String>,
    pub basic: bool,
}

pub struct BmcState {
    set: String,
    overrides: Mutex<HashMap<String, Override>>,
    latency: Mutex<Duration>,
    seen: Mutex<Vec<Seen>>,
    sessions: Mutex<HashMap<String, String>>,
    next_session: AtomicU64,
    /// Enforce credentials on everything but the service root.
    pub require_auth: AtomicBool,
    /// Answer the Sessions POST with 405 (a BMC without sessions).
    pub sessions_disabled: AtomicBool,
    pub username: String,
    pub password: Mutex<String>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// When not 0, log entry collections (`…/Entries`) are served in pages of this many
    /// members, with `$skip` and `Members@odata.nextLink` as BMCs do.
    pub entries_page_size: AtomicUsize,
    /// Paged entries without `Members@odata.count`, as some BMCs serve them.
    pub entries_hide_count: AtomicBool,
    /// Paged entries ignoring `$skip` (always the first page; only `nextLink` works).
    pub entries_ignore_skip: AtomicBool,
    /// The login creates the session, then waits this long before answering (a slow
    /// BMC whose answer comes after the agent's timeout: the session exists all the same).
    pub login_reply_delay: Mutex<Duration>,
    /// Refuse HTTP Basic auth (BMCs where it is turned off): only sessions work.
    pub basic_disabled: AtomicBool,
}

/// A running test BMC.
pub struct TestBmc {
    pub addr: SocketAddr,
    pub state: Arc<BmcState>,
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub password_file: PathBuf,
    /// The DER bytes of the certificate the server presents.
    pub leaf_der: Vec<u8>,
}

pub const USER: &str = "monitor";
pub const PASSWORD: &str = "s3cret-pw";

/// A test CA and a server certificate for 127.0.0.1/localhost signed by it: (ca pem, cert chain, key).
pub fn test_pki() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    test_pki_for(&["127.0.0.1", "localhost"])
}

/// A self-signed certificate for `names`, as BMCs ship them: (its pem, chain, key).
pub fn self_signed(names: &[&str]) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    (cert.pem(), vec![cert.der().clone()], der)
}

/// A test CA and a server certificate for `names` signed by it: (ca pem, cert chain, key).
pub fn test_pki_for(names: &[&str]) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pikett test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
    (ca_cert.pem(), vec![leaf.der().clone(), ca_cert.der().clone()], key)
}

impl TestBmc {
    /// Starts a server for `set` on 127.0.0.1:0 with a fresh test CA; sessions and auth enforced.
    pub async fn start(set: &str) -> TestBmc {
        Self::start_with_cert(set, test_pki()).await
    }

    /// Starts a server for `set` that presents `chain` (its first certificate is the
    /// server's); `ca_pem` becomes the config's `ca_file`.
    pub async fn start_with_cert(
        set: &str,
        (ca_pem, chain, key): (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    ) -> TestBmc {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let leaf_der = chain[0].to_vec();
        let cfg =
            tokio_rustls::rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BmcState {
            set: set.to_string(),
            overrides: Mutex::new(HashMap::new()),
            latency: Mutex::new(Duration::ZERO),
            seen: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(300),
            require_auth: AtomicBool::new(true),
            sessions_disabled: AtomicBool::new(false),
            username: USER.to_string(),
            password: Mutex::new(PASSWORD.to_string()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            entries_page_size: AtomicUsize::new(0),
            entries_hide_count: AtomicBool::new(false),
            entries_ignore_skip: AtomicBool::new(false),
            login_reply_delay: Mutex::new(Duration::ZERO),
            basic_disabled: AtomicBool::new(false),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let password_file = dir.path().join("idrac.pass");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        set_mode(&password_file, 0o600);
        TestBmc { addr, state, dir, ca_file, password_file, leaf_der }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// A probe config for this server: its CA, short timeouts.
    pub fn config(&self) -> RedfishConfig {
        let mut c = RedfishConfig::new(self.endpoint(), USER, &self.password_file);
        c.ca_file = Some(self.ca_file.clone());
        c.timeout = Duration::from_secs(5);
        c.poll_timeout = Duration::from_secs(30);
        c
    }

    pub fn set_override(&self, path: &str, o: Override) {
        self.state.overrides.lock().unwrap().insert(path.to_string(), o);
    }

    pub fn clear_override(&self, path: &str) {
        self.state.overrides.lock().unwrap().remove(path);
    }

    /// Edits a copy of the fixture at `path` and serves it from then on.
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut v = self.current(path);
        f(&mut v);
        self.set_override(path, Override::Json(v));
    }

    /// What `path` currently serves (override or fixture).
    pub fn current(&self, path: &str) -> Value {
        match self.state.overrides.lock().unwrap().get(path) {
            Some(Override::Json(v)) => v.clone(),
            _ => fixture_json(&self.state.set, path),
        }
    }

    pub fn set_latency(&self, d: Duration) {
        *self.state.latency.lock().unwrap() = d;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn reset_seen(&self) {
        self.state.seen.lock().unwrap().clear();
    }

    pub fn count(&self, method: &str) -> usize {
        self.seen().iter().filter(|s| s.method == method).count()
    }

    /// The most requests the server had in progress at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Live sessions on the server.
    pub fn sessions(&self) -> usize {
        self.state.sessions.lock().unwrap().len()
    }

    /// Forgets every session (as a BMC reboot or session timeout does): tokens now get 401.
    pub fn expire_sessions(&self) {
        self.state.sessions.lock().unwrap().clear();
    }
}

#[cfg(unix)]
pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, serde_json::to_vec(v).unwrap())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl BmcState {
    /// The JSON for a path: override, else fixture file; `None` when neither exists.
    fn load(&self, target: &str, path: &str) -> Result<Option<Value>, Box<Response<Body>>> {
        let o = {
            let ov = self.overrides.lock().unwrap();
            ov.get(target).or_else(|| ov.get(path)).cloned()
        };
        match o {
            Some(Override::Json(v)) => return Ok(Some(v)),
            Some(Override::Status(code, body)) => {
                return Err(Box::new(full(StatusCode::from_u16(code).unwrap(), body)));
            }
            Some(Override::Raw(bytes)) => return Err(Box::new(full(StatusCode::OK, bytes))),
            Some(Override::Huge(n)) => {
                let chunk = Bytes::from(vec![b' '; 64 * 1024]);
                let chunks = n.div_ceil(chunk.len());
                let stream =
                    futures::stream::iter(0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
                let resp = Response::builder()
                    .status(StatusCode::OK)
                    .header("Content-Type", "application/json")
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap();
                return Err(Box::new(resp));
            }
            Some(Override::Stall(_)) | None => {}
        }
        let file = fixture_file(&self.set, path);
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Box::new(full(StatusCode::INTERNAL_SERVER_ERROR, format!("bad fixture {}: {e}", file.display())))
            }),
            Err(_) => Ok(None),
        }
    }

    fn authorised(&self, token: &Option<String>, basic: &Option<(String, String)>) -> bool {
        if let Some(t) = token
            && self.sessions.lock().unwrap().contains_key(t)
        {
            return true;
        }
        if let Some((u, p)) = basic {
            return !self.basic_disabled.load(Ordering::SeqCst)
                && *u == self.username
                && *p == *self.password.lock().unwrap();
        }
        false
    }
}

fn decode_basic(h: &str) -> Option<(String, String)> {
    let b64 = h.strip_prefix("Basic ")?;
    let bytes = base64_decode(b64)?;
    let s = String::from_utf8(bytes).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Counts a request in progress for as long as it lives.
struct InFlight(Arc<BmcState>);

impl InFlight {
    fn new(st: &Arc<BmcState>) -> InFlight {
        let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(st.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(st: Arc<BmcState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let _in_flight = InFlight::new(&st);
    let latency = *st.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let method = req.method().clone();
    let target = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let path = percent_decode(req.uri().path()).trim_end_matches('/').to_string();
    let query = req.uri().query().map(percent_decode).unwrap_or_default();
    let token = req.headers().get("X-Auth-Token").and_then(|v| v.to_str().ok()).map(str::to_string);
    let basic = req.headers().get("Authorization").and_then(|v| v.to_str().ok()).and_then(decode_basic);
    st.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        target: target.clone(),
        token: token.clone(),
        basic: basic.is_some(),
    });
    let stall = {
        let ov = st.overrides.lock().unwrap();
        match ov.get(&target).or_else(|| ov.get(&path)) {
            Some(Override::Stall(d)) => Some(*d),
            _ => None,
        }
    };
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }

    if method == Method::POST && path.ends_with("/Sessions") {
        if st.sessions_disabled.load(Ordering::SeqCst) {
            return Ok(full(StatusCode::METHOD_NOT_ALLOWED, "{}"));
        }
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let creds: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let ok = creds["UserName"] == st.username.as_str() && creds["Password"] == st.password.lock().unwrap().as_str();
        if !ok {
            return Ok(json_response(StatusCode::UNAUTHORIZED, &json!({"error":{"message":"bad credentials"}})));
        }
        let n = st.next_session.fetch_add(1, Ordering::SeqCst);
        let tok = format!("token-{n}-{}", n * 7919);
        let loc = format!("{path}/{n}");
        st.sessions.lock().unwrap().insert(tok.clone(), loc.clone());
        let delay = *st.login_reply_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let mut resp = json_response(
            StatusCode::CREATED,
            &json!({"@odata.id": loc, "Id": n.to_string(), "UserName": st.username}),
        );
        resp.headers_mut().insert("X-Auth-Token", tok.parse().unwrap());
        resp.headers_mut().insert("Location", loc.parse().unwrap());
        return Ok(resp);
    }

    let is_root = path == "/redfish/v1" || path == "/redfish";
    if !is_root && st.require_auth.load(Ordering::SeqCst) && !st.authorised(&token, &basic) {
        return Ok(json_response(StatusCode::UNAUTHORIZED, &json!({"error":{"message":"unauthorised"}})));
    }

    if method == Method::DELETE {
        let mut sessions = st.sessions.lock().unwrap();
        let key = sessions.iter().find(|(_, loc)| **loc == path).map(|(k, _)| k.clone());
        return Ok(match key {
            Some(k) => {
                sessions.remove(&k);
                full(StatusCode::NO_CONTENT, "")
            }
            None => full(StatusCode::NOT_FOUND, "{}"),
        });
    }
    if method != Method::GET {
        return Ok(full(StatusCode::METHOD_NOT_ALLOWED, "{}"));
    }

    // Sessions are live: the collection lists the fixture's (other users') and ours.
    let live: Vec<String> = st.sessions.lock().unwrap().values().cloned().collect();
    if let Some(loc) = live.iter().find(|l| **l == path) {
        let id = loc.rsplit('/').next().unwrap_or_default();
        return Ok(json_response(StatusCode::OK, &json!({"@odata.id": loc, "Id": id, "UserName": st.username})));
    }
    let mut v = match st.load(&target, &path) {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Ok(json_response(
                StatusCode::NOT_FOUND,
                &json!({"error":{"message": format!("no resource {path}")}}),
            ));
        }
        Err(resp) => return Ok(*resp),
    };
    if query.contains("$expand")
        && let Some(members) = v.get_mut("Members").and_then(Value::as_array_mut)
    {
        for m in members.iter_mut() {
            let Some(p) = m.get("@odata.id").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            if let Ok(Some(full)) = st.load(&p, &p) {
                *m = full;
            }
        }
    }
    if path.ends_with("/SessionService/Sessions")
        && let Some(members) = v.get_mut("Members").and_then(Value::as_array_mut)
    {
        members.extend(live.iter().map(|l| json!({"@odata.id": l})));
        let n = members.len();
        v["Members@odata.count"] = json!(n);
    }
    let page = st.entries_page_size.load(Ordering::SeqCst);
    if page > 0
        && path.ends_with("/Entries")
        && let Some(members) = v.get("Members").and_then(Value::as_array).cloned()
    {
        // A BMC that ignores `$skip` follows only its own links (here `skiptoken`).
        let param = if st.entries_ignore_skip.load(Ordering::SeqCst) { "skiptoken" } else { "$skip" };
        let skip: usize = query
            .split('&')
            .find_map(|kv| kv.strip_prefix(param).and_then(|r| r.strip_prefix('=')))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let total = members.len();
        let slice: Vec<Value> = members.into_iter().skip(skip).take(page).collect();
        v["Members"] = Value::Array(slice);
        v["Members@odata.count"] = json!(total);
        if let Some(o) = v.as_object_mut() {
            o.remove("Members@odata.nextLink");
        }
        if skip + page < total {
            v["Members@odata.nextLink"] = json!(format!("{path}?{param}={}", skip + page));
        }
        if st.entries_hide_count.load(Ordering::SeqCst)
            && let Some(o) = v.as_object_mut()
        {
            o.remove("Members@odata.count");
        }
    }
    Ok(json_response(StatusCode::OK, &v))
}

// ---- helpers over observations ----

use pikett_agent::observation::{CheckResult, Event, Observation};
use pikett_agent::probes::redfish::RedfishProbe;
use pikett_agent::probes::{MemoryState, Probe, SharedState};

/// Checks by name; panics when a name occurs twice (a sensor reported twice).
pub fn checks(obs: &[Observation]) -> std::collections::BTreeMap<String, CheckResult> {
    let mut out = std::collections::BTreeMap::new();
    for o in obs {
        if let Observation::Check(c) = o {
            assert!(out.insert(c.name.clone(), c.clone()).is_none(), "check {} reported twice", c.name);
        }
    }
    out
}

/// The value of the sample `metric` with `label=value`, if exactly one exists.
pub fn sample(obs: &[Observation], metric: &str, label: &str, value: &str) -> Option<(f64, String)> {
    let found: Vec<(f64, String)> = obs
        .iter()
        .filter_map(|o| match o {
            Observation::Sample(s) if s.name == metric && s.labels.get(label).map(String::as_str) == Some(value) => {
                Some((s.value, s.unit.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(found.len() <= 1, "sample {metric}{{{label}={value}}} reported {} times", found.len());
    found.into_iter().next()
}

pub fn events(obs: &[Observation]) -> Vec<Event> {
    obs.iter()
        .filter_map(|o| match o {
            Observation::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

pub fn memory_state() -> SharedState {
    std::sync::Arc::new(MemoryState::default())
}

/// One poll with a fresh probe (then shut down, so no session is left behind).
pub async fn poll_once(bmc: &TestBmc) -> Vec<Observation> {
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).expect("probe");
    let obs = p.poll().await;
    p.shutdown().await;
    obs
}
