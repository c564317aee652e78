//! The collector's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and the customer status
//! pages (`/status/<secret>`, [`crate::api::status_page`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use std::fmt::Write as _;
use std::time::Duration;

use crate::services::faults::FaultService;
use crate::services::latest::LatestSamples;
use crate::services::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// Set once the store is open and the gRPC port is listening.
    pub ready: Arc<AtomicBool>,
    pub latest: Arc<LatestSamples>,
    pub faults: Arc<FaultService>,
    pub staleness: Duration,
    /// The store (its size on disk) and the data directory (free space), for `/metrics`.
    pub storage: Arc<dyn crate::store::Storage>,
    /// The ingest log (the size of its batch files).
    pub batches: Arc<crate::services::batches::BatchLog>,
    pub data_dir: std::path::PathBuf,
    /// The customer status pages.
    pub status_pages: Arc<crate::api::status_page::StatusPages>,
}

pub fn router(state: HttpState) -> Router {
    let status_pages = crate::api::status_page::router(state.status_pages.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(status_pages)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let mut text = prometheus_text(&s.metrics.encode());
    text.push_str("# HELP pikett_faults Faults by state and severity.\n# TYPE pikett_faults gauge\n");
    for ((state, severity), n) in s.faults.with_engine(|e| e.counts()) {
        let state = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let severity =
            serde_json::to_value(severity).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let _ = writeln!(text, "pikett_faults{{state=\"{state}\",severity=\"{severity}\"}} {n}");
    }
    let over = s.faults.checks_over_limit.load(std::sync::atomic::Ordering::Relaxed);
    text.push_str(
        "# HELP pikett_ingest_checks_over_limit_total Check results ignored because their host reports more \
         distinct checks than max_checks_per_host.\n# TYPE pikett_ingest_checks_over_limit_total counter\n",
    );
    let _ = writeln!(text, "pikett_ingest_checks_over_limit_total {over}");
    if let Ok(size) = s.storage.size_on_disk() {
        text.push_str("# HELP pikett_store_size_bytes Bytes the store's files take on disk.\n");
        text.push_str("# TYPE pikett_store_size_bytes gauge\n");
        let _ = writeln!(text, "pikett_store_size_bytes{{part=\"index\"}} {size}");
        let _ = writeln!(text, "pikett_store_size_bytes{{part=\"batch_files\"}} {}", s.batches.files_size());
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
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

/// Delivery receipts of SMS gateways: `POST /receipts/sms/{gateway}/{secret}`, or
/// `POST /receipts/sms/{gateway}` with `Authorization: Bearer {secret}`. Unknown gateway (or
/// one without callbacks): 404; wrong or missing secret: 401; a body over 64 KiB: 413; a
/// receipt without message id or status: 400. The secret is never logged, nor the path.
pub fn receipts_router(receipts: Arc<crate::notify::ReceiptTracker>) -> Router {
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;
    Router::new()
        .route("/receipts/sms/{gateway}", post(sms_receipt_by_header))
        .route("/receipts/sms/{gateway}/{secret}", post(sms_receipt_by_path))
        .layer(DefaultBodyLimit::max(crate::notify::receipts::MAX_RECEIPT_BYTES))
        .with_state(receipts)
}

async fn sms_receipt_by_header(
    State(receipts): State<Arc<crate::notify::ReceiptTracker>>,
    axum::extract::Path(gateway): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, &'static str) {
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    sms_receipt(&receipts, &gateway, secret, &headers, &body).await
}

async fn sms_receipt_by_path(
    State(receipts): State<Arc<crate::notify::ReceiptTracker>>,
    axum::extract::Path((gateway, secret)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, &'static str) {
    sms_receipt(&receipts, &gateway, Some(&secret), &headers, &body).await
}

async fn sms_receipt(
    receipts: &crate::notify::ReceiptTracker,
    gateway: &str,
    secret: Option<&str>,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> (StatusCode, &'static str) {
    use crate::notify::receipts::{CallbackError, CallbackOutcome};
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match receipts.callback(gateway, secret, content_type, body).await {
        Ok(CallbackOutcome::Applied) => (StatusCode::OK, "recorded\n"),
        Ok(CallbackOutcome::NotFinal) => (StatusCode::OK, "noted, not final\n"),
        // Answered 200 all the same: a gateway retries what it sees refused.
        Ok(CallbackOutcome::Unknown) => (StatusCode::OK, "no such message awaits a receipt\n"),
        Err(CallbackError::UnknownGateway) => (StatusCode::NOT_FOUND, "not found\n"),
        Err(CallbackError::Unauthorized) => {
            tracing::warn!(receipts = %gateway.chars().take(64).collect::<String>(), "delivery receipt refused: wrong or missing secret");
            (StatusCode::UNAUTHORIZED, "unauthorized\n")
        }
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
