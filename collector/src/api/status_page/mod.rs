//! The customer status page on the HTTP port: `GET /status/<secret>`, read-only, one
//! customer per link (`pikett status-page create CUSTOMER`; links in
//! `services::status_links`).
//!
//! A secret that matches no link gets the same bare 404 as any path the port does not serve.
//! A page is never cached, indexed, framed or followed by a referrer, and loads nothing.
//! The view is gathered here from the services ([`StatusPages::view`]), picked out by the
//! pure [`view::build`] and rendered by the pure [`render::render`].

pub mod render;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use jiff::Timestamp;
use pikett_core::faults::{FaultFilter, HOST_REACHABLE};

use crate::services::batches::BatchLog;
use crate::services::causes::SlaCauses;
use crate::services::faults::FaultService;
use crate::services::incidents::IncidentService;
use crate::services::pager::Pager;
use crate::services::status_links::StatusLinks;

/// The path prefix of a status page; the secret follows.
pub const PATH_PREFIX: &str = "/status/";

const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What a status page is made from.
pub struct StatusPages {
    pub links: Arc<StatusLinks>,
    pub store: Arc<BatchLog>,
    pub faults: Arc<FaultService>,
    pub incidents: Arc<IncidentService>,
    /// Customers and contracts (a reload replaces them).
    pub pager: Arc<Pager>,
    pub causes: SlaCauses,
    pub host_timeout: Option<Duration>,
}

pub fn router(pages: Arc<StatusPages>) -> Router {
    // `any`: another method gets the same 404 as a wrong secret, not a 405 that would
    // answer differently from an unknown path.
    Router::new().route("/status/{secret}", any(page)).with_state(pages)
}

async fn page(State(pages): State<Arc<StatusPages>>, method: Method, uri: Uri) -> Response {
    // The raw path, not axum's `Path` extractor: a malformed percent-encoding would be a
    // 400 there, which an unknown path never is. Secrets are URL-safe base64 as they stand.
    let secret = uri.path().strip_prefix(PATH_PREFIX).unwrap_or_default();
    let customer = pages.links.customer_of(secret);
    let Some(customer) = customer.filter(|_| method == Method::GET || method == Method::HEAD) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let html = render::render(&pages.view(&customer, Timestamp::now()));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::HeaderName::from_static("x-robots-tag"), "noindex, nofollow"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
        .into_response()
}

impl StatusPages {
    /// `customer`'s page at `now`, from the services' state.
    pub fn view(&self, customer: &str, now: Timestamp) -> view::StatusPageView {
        let hosts = self.store.hosts();
        let owned: std::collections::HashSet<&str> =
            hosts.iter().filter(|h| h.customer == customer).map(|h| h.host_id.as_str()).collect();
        let plan = self.pager.plan();
        let contract = plan.customers.get(customer).and_then(|c| c.sla.as_ref()).and_then(|n| plan.contracts.get(n));
        let (faults, maintenance) = self.faults.with_engine(|e| {
            // Only the customer's hosts' faults; resolved ones only when they count for the
            // month's availability (SLA-relevant), so the copy stays small.
            let relevant =
                |check: &str| check == HOST_REACHABLE || contract.is_some_and(|c| c.checks.iter().any(|x| x == check));
            let faults: Vec<_> = e
                .faults(&FaultFilter { all: true, ..Default::default() })
                .into_iter()
                .filter(|f| owned.contains(f.host.as_str()) && (!f.is_resolved() || relevant(&f.check)))
                .cloned()
                .collect();
            let maintenance: Vec<_> = e.maintenances().filter(|m| owned.contains(m.host.as_str())).cloned().collect();
            (faults, maintenance)
        });
        let incidents: Vec<_> = self.incidents.list(false).into_iter().filter(|i| i.customer == customer).collect();
        let causes = self.causes.all().unwrap_or_else(|e| {
            tracing::error!(error = %e, "status page: outage classifications unreadable; counting every outage");
            Default::default()
        });
        let (view, error) = view::build(&view::Inputs {
            customer,
            now,
            hosts: &hosts,
            host_timeout: self.host_timeout,
            faults: &faults,
            incidents: &incidents,
            maintenance: &maintenance,
            contract,
            causes: &causes,
        });
        if let Some(e) = error {
            tracing::error!(%customer, error = %e, "status page: availability not computed");
        }
        view
    }
}
