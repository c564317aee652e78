//! The customer status page on the HTTP port: `GET /status/<secret>`, read-only, one
//! customer per link (`pikett status-page create CUSTOMER`; links in
//! `services::status_links`).
//!
//! A secret that matches no link gets the same bare 404 as any path the port does not serve,
//! whatever the method; only GET and HEAD with a valid secret get a page.
//! A page is never cached by browsers or proxies, indexed, framed or followed by a referrer,
//! and loads nothing (the collector keeps it briefly itself, below).
//! The view is gathered here from the services ([`StatusPages::view`], reading the fault
//! engine without changing or writing it), picked out by the pure [`view::build`] and
//! rendered by the pure [`render::render`].
//!
//! Serving is bounded: a customer's rendered page is kept for [`CACHE_FOR`] (one entry per
//! customer with a link, expired ones dropped on every insert), at most [`MAX_BUILDS`] pages
//! are built at once, on blocking threads, and a request that waits longer than
//! [`BUSY_WAIT`] for its turn gets a 503. Only requests with a valid secret get that far.
//! A failure to compute a customer's availability is logged when it starts and when it
//! ends, not on every request.

pub mod render;
pub mod view;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use pikett_core::faults::FaultFilter;

use crate::services::batches::BatchStore;
use crate::services::faults::FaultService;
use crate::services::incidents::IncidentService;
use crate::services::pager::Pager;
use crate::services::sla_input::SlaInputs;
use crate::services::status_links::StatusLinks;

/// The path prefix of a status page; the secret follows.
pub const PATH_PREFIX: &str = "/status/";

/// How long a rendered page is served again before it is built anew.
pub const CACHE_FOR: Duration = Duration::from_secs(15);

/// Pages built at the same time, at most.
pub const MAX_BUILDS: usize = 2;

/// How long a request waits for its turn to build a page before it gets a 503.
pub const BUSY_WAIT: Duration = Duration::from_secs(10);

const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What a status page is made from.
pub struct StatusPages {
    pub links: Arc<StatusLinks>,
    pub store: Arc<dyn BatchStore>,
    pub faults: Arc<FaultService>,
    pub incidents: Arc<IncidentService>,
    /// Customers and contracts (a reload replaces them).
    pub pager: Arc<Pager>,
    /// A customer's SLA input, gathered as for `pikett sla report`.
    pub sla: Arc<SlaInputs>,
    pub host_timeout: Option<Duration>,
}

/// The router's fallback: every path no other route serves comes here, so a wrong secret,
/// another method or a path that is not a status page all get the one 404 by construction
/// (a route of its own would answer a HEAD differently from the default fallback).
pub fn router(pages: Arc<StatusPages>) -> Router {
    let served = Arc::new(Served::new(pages, MAX_BUILDS, BUSY_WAIT));
    Router::new().fallback(page).with_state(served)
}

async fn page(State(served): State<Arc<Served>>, method: Method, uri: Uri) -> Response {
    // The raw path, not axum's `Path` extractor: a malformed percent-encoding would be a
    // 400 there, which an unknown path never is. Secrets are URL-safe base64 as they stand.
    let Some(secret) = uri.path().strip_prefix(PATH_PREFIX) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let customer = served.pages.links.customer_of(secret);
    let Some(customer) = customer.filter(|_| method == Method::GET || method == Method::HEAD) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(html) = served.html(&customer).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CACHE_CONTROL, "no-store"), (header::RETRY_AFTER, "10")],
            "The status page is busy; please try again in a moment.\n",
        )
            .into_response();
    };
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

/// The serving side: the page cache, the limit on builds, the failures logged.
struct Served {
    pages: Arc<StatusPages>,
    /// Customer → when its page was built, and the page.
    cache: Mutex<HashMap<String, (Instant, Bytes)>>,
    builds: tokio::sync::Semaphore,
    busy_wait: Duration,
    problems: ProblemLog,
}

impl Served {
    fn new(pages: Arc<StatusPages>, builds: usize, busy_wait: Duration) -> Served {
        Served {
            pages,
            cache: Mutex::default(),
            builds: tokio::sync::Semaphore::new(builds),
            busy_wait,
            problems: ProblemLog::default(),
        }
    }

    fn cached(&self, customer: &str, now: Instant) -> Option<Bytes> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(customer)
            .filter(|(at, _)| now.saturating_duration_since(*at) < CACHE_FOR)
            .map(|(_, page)| page.clone())
    }

    /// `customer`'s page: the cached one while fresh, else built anew (`None`: no turn to
    /// build it within `busy_wait`, or the build failed).
    async fn html(self: &Arc<Self>, customer: &str) -> Option<Bytes> {
        if let Some(page) = self.cached(customer, Instant::now()) {
            return Some(page);
        }
        let permit = tokio::time::timeout(self.busy_wait, self.builds.acquire()).await.ok()?.ok()?;
        // Another request may have built it while this one waited.
        if let Some(page) = self.cached(customer, Instant::now()) {
            return Some(page);
        }
        let served = self.clone();
        let who = customer.to_string();
        let built = tokio::task::spawn_blocking(move || {
            let (view, problems) = served.pages.view(&who, Timestamp::now());
            served.problems.note(&who, &problems);
            Bytes::from(render::render(&view))
        })
        .await;
        drop(permit);
        match built {
            Ok(page) => {
                let now = Instant::now();
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < CACHE_FOR);
                cache.insert(customer.to_string(), (now, page.clone()));
                Some(page)
            }
            Err(e) => {
                tracing::error!(error = %e, "status page: building the page failed");
                None
            }
        }
    }
}

/// What went wrong while a page was gathered (the page says the figures are unavailable or
/// counts every outage); logged by [`ProblemLog`].
#[derive(Debug, Default)]
pub struct Problems {
    /// The availability could not be computed (its input could not be gathered, e.g. the
    /// outage classifications could not be read, or the computation failed).
    pub availability: Option<String>,
}

/// Logs a failure when it starts and when it ends, not on every request.
#[derive(Default)]
struct ProblemLog {
    state: Mutex<ProblemState>,
}

#[derive(Default)]
struct ProblemState {
    /// Customers whose availability is failing.
    availability_failing: BTreeSet<String>,
}

impl ProblemLog {
    /// Logs what changed since the last page; returns how many lines it logged.
    fn note(&self, customer: &str, problems: &Problems) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut logged = 0;
        let failing = st.availability_failing.contains(customer);
        match (&problems.availability, failing) {
            (Some(e), false) => {
                tracing::error!(
                    %customer,
                    error = %e,
                    "status page: availability not computed (logged again when it is computed)"
                );
                st.availability_failing.insert(customer.to_string());
                logged += 1;
            }
            (None, true) => {
                tracing::info!(%customer, "status page: availability computed again");
                st.availability_failing.remove(customer);
                logged += 1;
            }
            _ => {}
        }
        logged
    }
}

impl StatusPages {
    /// `customer`'s page at `now`, from the services' state (read only: nothing is written),
    /// and what went wrong gathering it.
    pub fn view(&self, customer: &str, now: Timestamp) -> (view::StatusPageView, Problems) {
        let hosts = self.store.hosts();
        // The hosts the page shows: the customer's now, and not removed.
        let owned: std::collections::HashSet<&str> =
            hosts.iter().filter(|h| h.customer == customer && h.removed_ms == 0).map(|h| h.host_id.as_str()).collect();
        let plan = self.pager.plan();
        let contract = plan.contract_of(customer).map(|(_, c)| c);
        // What the page shows now: unresolved faults raised for the customer on its hosts (a
        // host that moved to another customer keeps its old faults under the old one), and
        // the windows announced for it.
        let (faults, maintenance) = self.faults.read_engine(|e| {
            let faults: Vec<_> = e
                .faults(&FaultFilter::default())
                .into_iter()
                .filter(|f| f.customer == customer && owned.contains(f.host.as_str()) && !f.is_resolved())
                .cloned()
                .collect();
            let maintenance: Vec<_> = e
                .maintenances()
                .filter(|m| m.customer == customer && owned.contains(m.host.as_str()))
                .cloned()
                .collect();
            (faults, maintenance)
        });
        let incidents: Vec<_> = self.incidents.list(false).into_iter().filter(|i| i.customer == customer).collect();
        let mut problems = Problems::default();
        // This month's availability input, gathered as for `pikett sla report`.
        let sla = contract.and_then(|c| {
            let gathered = view::current_month(c, now)
                .map_err(|e| e.to_string())
                .and_then(|month| self.sla.customer(customer, c, &[month], now).map_err(|e| e.to_string()));
            gathered.map_err(|e| problems.availability = Some(e)).ok()
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
            sla: sla.as_ref(),
        });
        if let Some(e) = error {
            problems.availability = Some(e.to_string());
        }
        (view, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CollectorConfig;
    use crate::services::metrics::Metrics;
    use crate::store::batch_files::BatchFiles;
    use crate::store::{SledStorage, Storage};
    use pikett_core::hosts::HostRecord;
    use pikett_proto::v1 as pb;

    struct World {
        pages: Arc<StatusPages>,
        storage: Arc<dyn Storage>,
        _dir: tempfile::TempDir,
    }

    const CONFIG: &str = "[customers.acme]\nsla = \"standard\"\n[customers.globex]\nsla = \"standard\"\n\
        [sla.standard]\ntimezone = \"UTC\"\nchecks = [\"command/ctl\"]\n\
        windows = [ { name = \"all\", from = \"00:00\", to = \"24:00\", days = \"mon-sun\", target = \"99%\" } ]\n";

    /// Real services on a temporary store: web-1 had a critical fault as acme's host since an
    /// hour ago (an open incident); the host registry gives it to `owner` now.
    async fn world(owner: &str) -> World {
        let config = CollectorConfig::parse(std::path::Path::new("c.toml"), CONFIG).unwrap();
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::temporary().unwrap());
        let now = Timestamp::now();
        let rec = HostRecord {
            host_id: "web-1".into(),
            customer: owner.into(),
            last_seen_ms: now.as_millisecond(),
            ..Default::default()
        };
        storage.tree("hosts").unwrap().insert(b"web-1", serde_json::to_vec(&rec).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = BatchFiles::open(dir.path(), Duration::from_secs(3600), false).unwrap();
        let store: Arc<dyn BatchStore> =
            Arc::new(crate::services::batches::BatchLog::open(storage.clone(), files).unwrap());
        let faults = Arc::new(FaultService::open(storage.as_ref(), config.engine_config().unwrap()).unwrap());
        let before = now.checked_sub(jiff::SignedDuration::from_hours(1)).unwrap();
        let batch = pb::Batch {
            checks: vec![pb::CheckResult::new(
                "command/ctl".into(),
                pb::CheckStatus::Critical,
                "down".into(),
                before.as_millisecond(),
            )],
            ..Default::default()
        };
        for _ in 0..5 {
            faults.ingest("web-1", "acme", &pikett_proto::received::ReceivedBatch::from_batch(&batch), before);
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // The pager's loop runs for the test's life.
        std::mem::forget(tx);
        let pager =
            crate::services::pager::spawn(&config, storage.clone(), faults.clone(), Arc::new(Metrics::new()), rx)
                .unwrap();
        let incidents =
            Arc::new(IncidentService::open(storage.clone(), &config, faults.clone(), pager.clone()).await.unwrap());
        let sla = Arc::new(
            SlaInputs::new(store.clone(), storage.clone(), faults.clone(), Duration::from_secs(400 * 86_400)).unwrap(),
        );
        let pages = Arc::new(StatusPages {
            links: Arc::new(StatusLinks::open(storage.clone()).unwrap()),
            store,
            faults,
            incidents,
            pager,
            sla,
            host_timeout: None,
        });
        World { pages, storage, _dir: dir }
    }

    #[tokio::test]
    async fn a_page_view_writes_nothing_to_the_store() {
        let w = world("acme").await;
        let engine = w.storage.tree("engine").unwrap();
        // A marker where the engine keeps its id counters: any write of the engine's state
        // replaces it.
        engine.insert(b"n/", b"marker".to_vec()).unwrap();
        let (view, problems) = w.pages.view("acme", Timestamp::now());
        // The page did read the engine: web-1's fault is down, an open incident, and an hour
        // of outage this month.
        assert_eq!((view.hosts.len(), view.incidents.len()), (1, 1), "{view:?}");
        assert_eq!(view.hosts[0].health, view::Health::Down, "{view:?}");
        assert!(problems.availability.is_none(), "{problems:?}");
        let view::Availability::Month { rows, .. } = &view.availability else { panic!("{view:?}") };
        assert!(rows.len() == 1 && rows[0].availability < 1.0, "{rows:?}");
        assert_eq!(engine.get(b"n/").unwrap().as_deref(), Some(&b"marker"[..]), "the page wrote the engine's state");
    }

    #[tokio::test]
    async fn a_page_is_built_once_per_cache_period_and_builds_are_limited() {
        let w = world("acme").await;
        let served = Arc::new(Served::new(w.pages.clone(), 1, Duration::from_millis(100)));
        let first = served.html("acme").await.expect("a page");
        assert!(std::str::from_utf8(&first).unwrap().contains("<td>web-1</td>"));
        let again = served.html("acme").await.expect("a page");
        assert_eq!(first.as_ptr(), again.as_ptr(), "built again within {CACHE_FOR:?}");
        // Once the page is older than the cache period, it is built anew.
        let past = Instant::now().checked_sub(CACHE_FOR + Duration::from_secs(1)).expect("an instant in the past");
        served.cache.lock().unwrap().values_mut().for_each(|(at, _)| *at = past);
        let fresh = served.html("acme").await.expect("a page");
        assert_ne!(first.as_ptr(), fresh.as_ptr(), "a stale page served");
        assert_eq!(served.cache.lock().unwrap().len(), 1);

        // No build slot free: a page not in the cache is refused after the wait, a cached one
        // is still served.
        let permit = served.builds.acquire().await.unwrap();
        assert!(served.html("globex").await.is_none(), "built beyond the limit");
        assert!(served.html("acme").await.is_some());
        drop(permit);
        assert!(served.html("globex").await.is_some());
        assert_eq!(served.cache.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_host_moved_to_another_customer_shows_nothing_of_its_old_customer() {
        // web-1's fault was raised while it was acme's; it is globex's now.
        let w = world("globex").await;
        let (view, problems) = w.pages.view("globex", Timestamp::now());
        assert!(problems.availability.is_none(), "{problems:?}");
        assert_eq!(view.hosts.len(), 1, "{view:?}");
        assert_eq!(view.hosts[0].health, view::Health::Up, "acme's fault on globex's page: {view:?}");
        assert!(view.incidents.is_empty(), "{view:?}");
        let view::Availability::Month { rows, .. } = &view.availability else { panic!("{view:?}") };
        assert!(rows.len() == 1 && rows[0].availability == 1.0, "acme's outage counted for globex: {rows:?}");
        let (acme, _) = w.pages.view("acme", Timestamp::now());
        assert!(acme.hosts.is_empty(), "{acme:?}");
    }

    #[test]
    fn a_failure_is_logged_when_it_starts_and_when_it_ends_not_on_every_page() {
        let log = ProblemLog::default();
        let failing = Problems { availability: Some("bad month".into()) };
        assert_eq!(log.note("acme", &failing), 1);
        assert_eq!(log.note("acme", &failing), 0);
        assert_eq!(log.note("acme", &failing), 0);
        // Each customer's availability is its own state.
        assert_eq!(log.note("globex", &failing), 1);
        assert_eq!(log.note("acme", &Problems::default()), 1);
        assert_eq!(log.note("acme", &Problems::default()), 0);
        assert_eq!(log.note("globex", &failing), 0);
        assert_eq!(log.note("acme", &failing), 1);
    }
}
