//! The collector's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/healthz/leader`, and
//! on the leader the customer status pages (`/status/<secret>`, [`crate::api::status_page`])
//! and SMS delivery receipts (`/receipts/sms/NAME`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use std::fmt::Write as _;
use std::time::Duration;

use tokio::sync::watch;

use crate::services::faults::FaultService;
use crate::services::latest::LatestSamples;
use crate::services::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// Set once the store is open and the gRPC port is listening.
    pub ready: Arc<AtomicBool>,
    pub latest: Arc<LatestSamples>,
    /// The fault engine, once this node leads (its counts are the leader's to export).
    pub faults: watch::Receiver<Option<Arc<FaultService>>>,
    pub staleness: Duration,
    /// The store (its size on disk) and the data directory (free space), for `/metrics`.
    pub storage: Arc<dyn crate::store::Storage>,
    /// The stored batches (the bytes their payloads take).
    pub batches: Arc<dyn crate::services::batches::BatchStore>,
    pub data_dir: std::path::PathBuf,
    /// The leader's pages (customer status pages, SMS receipts), once this node leads.
    pub leader_http: watch::Receiver<Option<Router>>,
    /// This node's role, for `/healthz/leader`.
    pub leadership: watch::Receiver<crate::services::leadership::Leadership>,
}

/// `/metrics`, `/healthz`, `/readyz` and `/healthz/leader` on every node; every other path
/// goes to the leader's pages, which a node that does not lead answers with 503.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/healthz/leader", get(healthz_leader))
        .fallback(leader_pages)
        .with_state(state)
}

/// 200 on the leader, 503 on the other nodes: lets a load balancer in front of a cluster
/// send customers' status page views and gateways' receipt callbacks to the leader.
async fn healthz_leader(State(s): State<HttpState>) -> Response {
    // Leading, and its pages are up (not in the seconds a takeover opens the state).
    if s.leadership.borrow().leads_now().is_some() && s.leader_http.borrow().is_some() {
        "leader\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not the leader\n").into_response()
    }
}

async fn leader_pages(State(s): State<HttpState>, request: axum::extract::Request) -> Response {
    let pages = s.leader_http.borrow().clone();
    match pages {
        Some(pages) => match tower::ServiceExt::oneshot(pages, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "This collector is not the leader of its cluster; its pages are served by the leader.\n",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    // Rendering every agent series is CPU work (about a second for 300,000 series): on a
    // blocking thread, so the runtime's workers go on reading and acknowledging batches
    // meanwhile (on a worker it held acks of the tasks queued there for that long).
    match tokio::task::spawn_blocking(move || metrics_text(&s)).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering /metrics failed\n").into_response()
        }
    }
}

/// The whole `/metrics` text.
fn metrics_text(s: &HttpState) -> String {
    let mut text = prometheus_text(&s.metrics.encode());
    let faults = s.faults.borrow().clone();
    if let Some(faults) = faults {
        fault_metrics(&faults, &mut text);
    }
    if let Ok(size) = s.storage.size_on_disk() {
        text.push_str("# HELP pikett_store_size_bytes Bytes the store's files take on disk.\n");
        text.push_str("# TYPE pikett_store_size_bytes gauge\n");
        let _ = writeln!(text, "pikett_store_size_bytes{{part=\"index\"}} {size}");
        let _ = writeln!(text, "pikett_store_size_bytes{{part=\"batch_files\"}} {}", s.batches.payload_bytes());
    }
    if let Ok((free, total)) = crate::services::self_check::free_space(&s.data_dir) {
        text.push_str("# HELP pikett_data_dir_free_bytes Free bytes on the data directory's file system.\n");
        text.push_str("# TYPE pikett_data_dir_free_bytes gauge\n");
        let _ = writeln!(text, "pikett_data_dir_free_bytes {free}");
        text.push_str("# HELP pikett_data_dir_size_bytes Size of the data directory's file system.\n");
        text.push_str("# TYPE pikett_data_dir_size_bytes gauge\n");
        let _ = writeln!(text, "pikett_data_dir_size_bytes {total}");
    }
    let series_over = s.latest.over_limit.load(std::sync::atomic::Ordering::Relaxed);
    text.push_str(
        "# HELP pikett_metrics_series_over_limit_total Samples not exported because their host has \
         max_series_per_host series already.\n# TYPE pikett_metrics_series_over_limit_total counter\n",
    );
    let _ = writeln!(text, "pikett_metrics_series_over_limit_total {series_over}");
    let now = jiff::Timestamp::now().as_millisecond();
    let names = crate::services::latest::ExpositionNames::from_exposition(&text);
    s.latest.render(now, s.staleness.as_millis() as i64, &names, &mut text);
    text
}

/// The fault engine's gauges and counters (the leader's).
fn fault_metrics(faults: &FaultService, text: &mut String) {
    text.push_str("# HELP pikett_faults Faults by state and severity.\n# TYPE pikett_faults gauge\n");
    for ((state, severity), n) in faults.with_engine(|e| e.counts()) {
        let state = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let severity =
            serde_json::to_value(severity).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let _ = writeln!(text, "pikett_faults{{state=\"{state}\",severity=\"{severity}\"}} {n}");
    }
    let over = faults.checks_over_limit.load(std::sync::atomic::Ordering::Relaxed);
    text.push_str(
        "# HELP pikett_ingest_checks_over_limit_total Check results ignored because their host reports more \
         distinct checks than max_checks_per_host.\n# TYPE pikett_ingest_checks_over_limit_total counter\n",
    );
    let _ = writeln!(text, "pikett_ingest_checks_over_limit_total {over}");
}

/// prometheus-client writes OpenMetrics; `/metrics` serves the Prometheus text
/// format (0.0.4), which every scraper and `promtool check metrics` read: a
/// counter family is named with its `_total` suffix, and there is no `# EOF`.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Receipt requests handled at once; more wait up to [`RECEIPT_WAIT`], then get 503.
const MAX_RECEIPT_REQUESTS: usize = 32;
const RECEIPT_WAIT: Duration = Duration::from_secs(5);
/// At most one warning about refused receipts per this long (the metric counts them all).
const REFUSED_WARNING_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct ReceiptsState {
    receipts: Arc<crate::notify::ReceiptTracker>,
    metrics: Arc<Metrics>,
    permits: Arc<tokio::sync::Semaphore>,
    /// When the last warning about refused receipts went out, and how many were refused
    /// since without one.
    refused: Arc<std::sync::Mutex<(Option<std::time::Instant>, u64)>>,
}

/// Delivery receipts of SMS gateways: `POST /receipts/sms/{gateway}/{secret}`, or
/// `POST /receipts/sms/{gateway}` with `Authorization: Bearer {secret}`. Unknown gateway (or
/// one without callbacks): 404; wrong or missing secret: 401, before the body is read; a body
/// over 64 KiB: 413; a receipt without message id or status: 400; more than 32 requests at
/// once for over 5 s, or the receipt not stored: 503. The secret is never logged, nor the
/// path; refusals are counted (`pikett_sms_receipts_refused_total`) and logged at most once a
/// minute.
pub fn receipts_router(receipts: Arc<crate::notify::ReceiptTracker>, metrics: Arc<Metrics>) -> Router {
    use axum::routing::post;
    let state = ReceiptsState {
        receipts,
        metrics,
        permits: Arc::new(tokio::sync::Semaphore::new(MAX_RECEIPT_REQUESTS)),
        refused: Arc::default(),
    };
    Router::new()
        .route("/receipts/sms/{gateway}", post(sms_receipt_by_header))
        .route("/receipts/sms/{gateway}/{secret}", post(sms_receipt_by_path))
        .with_state(state)
}

async fn sms_receipt_by_header(
    State(s): State<ReceiptsState>,
    axum::extract::Path(gateway): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> (StatusCode, &'static str) {
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    sms_receipt(&s, &gateway, secret, &headers, body).await
}

async fn sms_receipt_by_path(
    State(s): State<ReceiptsState>,
    axum::extract::Path((gateway, secret)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> (StatusCode, &'static str) {
    sms_receipt(&s, &gateway, Some(&secret), &headers, body).await
}

/// Counts a refused receipt; warns at most once per [`REFUSED_WARNING_EVERY`].
fn refused(s: &ReceiptsState, gateway: &str) {
    s.metrics.sms_receipts_refused_total.inc();
    let now = std::time::Instant::now();
    let mut last = s.refused.lock().unwrap_or_else(|p| p.into_inner());
    last.1 += 1;
    if last.0.is_none_or(|at| now.duration_since(at) >= REFUSED_WARNING_EVERY) {
        let gateway: String = gateway.chars().filter(|c| !c.is_control()).take(64).collect();
        tracing::warn!(receipts = %gateway, refused = last.1, "delivery receipts refused: wrong or missing secret (counted in pikett_sms_receipts_refused_total; logged at most once a minute)");
        *last = (Some(now), 0);
    }
}

async fn sms_receipt(
    s: &ReceiptsState,
    gateway: &str,
    secret: Option<&str>,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> (StatusCode, &'static str) {
    use crate::notify::receipts::{CallbackError, CallbackOutcome, MAX_RECEIPT_BYTES};
    let busy = (StatusCode::SERVICE_UNAVAILABLE, "busy, try again\n");
    let Ok(Ok(_permit)) = tokio::time::timeout(RECEIPT_WAIT, s.permits.acquire()).await else { return busy };
    // The secret first: nothing of an unauthenticated request's body is read.
    let authorized = match s.receipts.authorize(gateway, secret) {
        Ok(a) => a,
        Err(CallbackError::Unauthorized) => {
            refused(s, gateway);
            return (StatusCode::UNAUTHORIZED, "unauthorized\n");
        }
        Err(_) => return (StatusCode::NOT_FOUND, "not found\n"),
    };
    let too_large = (StatusCode::PAYLOAD_TOO_LARGE, "a receipt has at most 64 KiB\n");
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if declared.is_some_and(|n: usize| n > MAX_RECEIPT_BYTES) {
        return too_large;
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_RECEIPT_BYTES).await else { return too_large };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match s.receipts.receipt(&authorized, content_type, &body).await {
        Ok(CallbackOutcome::Applied) => (StatusCode::OK, "recorded\n"),
        Ok(CallbackOutcome::NotFinal) => (StatusCode::OK, "noted, not final\n"),
        // Answered 200 all the same: a gateway retries what it sees refused. A final status
        // is kept for a while, for an SMS whose send answer is still on its way.
        Ok(CallbackOutcome::Unknown) => (StatusCode::OK, "no such message awaits a receipt\n"),
        Err(CallbackError::UnknownGateway) => (StatusCode::NOT_FOUND, "not found\n"),
        Err(CallbackError::Unauthorized) => (StatusCode::UNAUTHORIZED, "unauthorized\n"),
        Err(CallbackError::BadReceipt(why)) => {
            tracing::warn!(receipts = %gateway, %why, "delivery receipt refused");
            (StatusCode::BAD_REQUEST, "receipt without message id or status\n")
        }
        Err(CallbackError::Store(e)) => {
            tracing::error!(receipts = %gateway, error = %e, "delivery receipt not recorded");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n")
        }
    }
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
