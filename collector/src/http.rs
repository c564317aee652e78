//! The collector's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use std::fmt::Write as _;
use std::time::Duration;

use crate::exposition::LatestSamples;
use crate::fault_service::FaultService;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// Set once the store is open and the gRPC port is listening.
    pub ready: Arc<AtomicBool>,
    pub latest: Arc<LatestSamples>,
    pub faults: Arc<FaultService>,
    pub staleness: Duration,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let mut text = s.metrics.encode();
    // prometheus-client ends with `# EOF`; the agents' series and fault counts go before it.
    if let Some(stripped) = text.strip_suffix("# EOF\n") {
        text.truncate(stripped.len());
    }
    text.push_str("# HELP pikett_faults Faults by state and severity.\n# TYPE pikett_faults gauge\n");
    for ((state, severity), n) in s.faults.with_engine(|e| e.counts()) {
        let state = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let severity =
            serde_json::to_value(severity).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let _ = writeln!(text, "pikett_faults{{state=\"{state}\",severity=\"{severity}\"}} {n}");
    }
    let now = jiff::Timestamp::now().as_millisecond();
    s.latest.render(now, s.staleness.as_millis() as i64, &mut text);
    text.push_str("# EOF\n");
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
