//! The leader's half of the wiring: every service that decides and pages (fault engine,
//! pager, incidents, patches, retention, the clock tick, the staff API and the pages built on
//! them), started when this node leads. With sled the one collector leads from the start;
//! on PostgreSQL a node starts them when it takes the lease, from the state in the database,
//! and never gives them back: a leader that loses its lease exits (see `server::serve_from`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pikett_proto::v1::admin_server::AdminServer;
use pikett_proto::v1::incidents_server::IncidentsServer;
use pikett_proto::v1::reports_server::ReportsServer;
use tokio::sync::{mpsc, watch};

use pikett_core::faults::Transition;
use pikett_core::hosts::{HostStatus, host_status, host_timeout};

use crate::api::access::Access;
use crate::api::admin::AdminService;
use crate::api::incidents::IncidentsGrpc;
use crate::api::reports::ReportsService;
use crate::config::CollectorConfig;
use crate::services::audit::AuditLog;
use crate::services::batches::BatchStore;
use crate::services::faults::FaultService;
use crate::services::identity::IdentityService;
use crate::services::incidents::IncidentService;
use crate::services::leadership::ClusterView;
use crate::services::metrics::{Metrics, StatusLabel};
use crate::services::patches::PatchService;
use crate::services::pki::Ca;
use crate::services::reload::Reloader;
use crate::services::retention::Retention;
use crate::store::Storage;

/// What the leader's services are built from.
pub(super) struct LeaderContext {
    pub config: CollectorConfig,
    pub config_path: Option<PathBuf>,
    /// The leader's state: sled's one storage, or on PostgreSQL a storage opened at takeover
    /// and fenced by the term.
    pub storage: Arc<dyn Storage>,
    pub batches: Arc<dyn BatchStore>,
    pub metrics: Arc<Metrics>,
    pub access: Arc<Access>,
    pub audit: Arc<AuditLog>,
    pub identity: Arc<IdentityService>,
    pub ca: Option<Arc<Ca>>,
    pub cluster: ClusterView,
    /// This node's leadership in a cluster (`None` for the embedded collector, which always
    /// leads): every page checks it right before it goes out.
    pub leadership: Option<(watch::Receiver<crate::services::leadership::Leadership>, i64)>,
    /// Turns true once the stored batches are evaluated: escalations wait for it (`None`:
    /// at once, the embedded collector evaluates in its writer).
    pub escalate_when: Option<watch::Receiver<bool>>,
}

/// The running leader services, and the interfaces built on them.
pub(super) struct LeaderServices {
    pub faults: Arc<FaultService>,
    pub patches: Arc<PatchService>,
    /// Fault transitions, to the pager and the incidents.
    pub transitions: mpsc::UnboundedSender<Vec<Transition>>,
    pub admin: AdminServer<AdminService>,
    pub reports: ReportsServer<ReportsService>,
    pub incidents: IncidentsServer<IncidentsGrpc>,
    /// The customer status pages and the SMS receipt callbacks.
    pub http: axum::Router,
    pub reloader: Arc<Reloader>,
    storage: Arc<dyn Storage>,
    batches: Arc<dyn BatchStore>,
    metrics: Arc<Metrics>,
    config: CollectorConfig,
}

impl LeaderServices {
    /// Opens the leader's services on `cx.storage` and starts their tasks, except the clock
    /// ([`LeaderServices::start_clock`]).
    pub async fn start(cx: LeaderContext) -> anyhow::Result<LeaderServices> {
        let LeaderContext {
            config,
            config_path,
            storage,
            batches,
            metrics,
            access,
            audit,
            identity,
            ca,
            cluster,
            leadership,
            escalate_when,
        } = cx;
        let engine_config = config.engine_config().map_err(anyhow::Error::msg)?;
        let faults = Arc::new(FaultService::open(storage.as_ref(), engine_config)?);
        let (transitions_tx, mut transitions_rx) = mpsc::unbounded_channel::<Vec<Transition>>();
        let (pager_tx, pager_rx) = mpsc::unbounded_channel();
        // A leader of a cluster checks its lease right before each page goes out.
        let send_guard = leadership.map(|(leadership, term)| -> crate::notify::outbox::SendGuard {
            Arc::new(move || leadership.borrow().leads_now() == Some(term))
        });
        let pager = crate::services::pager::spawn_guarded(
            &config,
            storage.clone(),
            faults.clone(),
            metrics.clone(),
            pager_rx,
            send_guard,
            escalate_when,
        )?;
        let incidents = Arc::new(IncidentService::open(storage.clone(), &config, faults.clone(), pager.clone()).await?);
        // Fault transitions fan out: to the pager first, then to the incidents.
        let fan_out = incidents.clone();
        tokio::spawn(async move {
            while let Some(batch) = transitions_rx.recv().await {
                let _ = pager_tx.send(batch.clone());
                fan_out.on_transitions(&batch).await;
            }
        });
        let patches = Arc::new(PatchService::from_config(storage.as_ref(), &config)?);
        let reports = ReportsService::new(
            &config,
            batches.clone(),
            storage.clone(),
            faults.clone(),
            patches.clone(),
            access.clone(),
            pager.clone(),
        )?;
        let sla_inputs = reports.sla_inputs();
        let status_links = Arc::new(crate::services::status_links::StatusLinks::open(storage.clone())?);
        let status_pages = Arc::new(crate::api::status_page::StatusPages {
            links: status_links.clone(),
            store: batches.clone(),
            faults: faults.clone(),
            incidents: incidents.clone(),
            pager: pager.clone(),
            sla: sla_inputs.clone(),
            host_timeout: config.host_timeout,
        });
        let http = crate::api::status_page::router(status_pages)
            .merge(crate::api::http::receipts_router(pager.receipts(), metrics.clone()));
        let reloader = Arc::new(Reloader::new(config_path, config.clone(), faults.clone(), pager.clone()));
        let reloader_slot = Arc::new(std::sync::OnceLock::new());
        let _ = reloader_slot.set(reloader.clone());
        let admin = AdminService {
            store: batches.clone(),
            storage: storage.clone(),
            faults: faults.clone(),
            pager: pager.clone(),
            host_timeout: config.host_timeout,
            transitions: transitions_tx.clone(),
            access: access.clone(),
            identity,
            ca,
            reloader: reloader_slot,
            status_links,
            cluster,
        };
        Retention {
            config: config.retention.clone(),
            batches: batches.clone(),
            storage: storage.clone(),
            faults: faults.clone(),
            pager,
            incidents: incidents.clone(),
            audit,
            metrics: metrics.clone(),
        }
        .spawn();
        Ok(LeaderServices {
            faults,
            patches,
            transitions: transitions_tx,
            admin: AdminServer::new(admin),
            reports: ReportsServer::new(reports),
            incidents: IncidentsServer::new(IncidentsGrpc { incidents, access, sla: sla_inputs }),
            http,
            reloader,
            storage,
            batches,
            metrics,
            config,
        })
    }

    /// Starts the clock's side of the fault engine (host timeouts, maintenance and silence
    /// boundaries), the patch deadlines and the collector's own disk check. On PostgreSQL only once the batches
    /// stored before the takeover are evaluated: ticking earlier would find hosts silent whose
    /// batches are only waiting.
    pub fn start_clock(&self, beat: pikett_support::service::Beat) {
        crate::services::patches::spawn_evaluator(
            self.patches.clone(),
            self.faults.clone(),
            self.storage.clone(),
            self.transitions.clone(),
        );
        let (own, dir, tx, storage) =
            (self.faults.clone(), self.config.data_dir.clone(), self.transitions.clone(), self.storage.clone());
        let (warn, crit, every) = (
            self.config.data_dir_warn_free_percent,
            self.config.data_dir_crit_free_percent,
            self.config.self_check_interval,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let changes = crate::services::self_check::check_disk(&own, &dir, warn, crit, jiff::Timestamp::now());
                if !changes.is_empty() {
                    if let Err(e) = storage.flush().await {
                        crate::services::storage_failure::stop("recording the collector's own disk check", &e);
                    }
                    let _ = tx.send(changes);
                }
            }
        });
        tokio::spawn(clock_tick(
            self.batches.clone(),
            self.storage.clone(),
            self.faults.clone(),
            self.metrics.clone(),
            self.config.host_timeout,
            self.transitions.clone(),
            beat,
        ));
    }
}

/// The clock's side of the fault engine (host timeouts, maintenance and
/// silence boundaries) and the host status gauges, once a second.
async fn clock_tick(
    store: Arc<dyn BatchStore>,
    storage: Arc<dyn Storage>,
    faults: Arc<FaultService>,
    metrics: Arc<Metrics>,
    configured_timeout: Option<Duration>,
    transitions: mpsc::UnboundedSender<Vec<Transition>>,
    beat: pikett_support::service::Beat,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        // Fault injection (feature `failpoints`, `FAILPOINTS=clock-hang=sleep(600000)`): a
        // clock loop that hangs, for the watchdog test.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("clock-hang");
        beat.beat();
        let now = jiff::Timestamp::now();
        let hosts = store.active_hosts();
        let timeouts: HashMap<String, Duration> =
            hosts.iter().map(|h| (h.host_id.clone(), host_timeout(configured_timeout, h))).collect();
        let changes = faults.tick(now, |h| timeouts.get(h).copied().unwrap_or(Duration::from_secs(90)));
        if !changes.is_empty() {
            match storage.flush().await {
                Ok(()) => {}
                // A deposed leader: nothing of its may go out.
                Err(e @ crate::store::StoreError::Fenced { .. }) => {
                    crate::services::storage_failure::stop("recording the clock's fault changes", &e)
                }
                // The next flush carries the changes (the engine keeps them).
                Err(e) => tracing::error!(error = %e, "cannot flush fault state"),
            }
            let _ = transitions.send(changes);
        }
        let now_ms = now.as_millisecond();
        let up = hosts.iter().filter(|h| host_status(h, now_ms, configured_timeout) == HostStatus::Up).count();
        metrics.hosts.get_or_create(&StatusLabel { status: "up".into() }).set(up as i64);
        metrics.hosts.get_or_create(&StatusLabel { status: "down".into() }).set((hosts.len() - up) as i64);
    }
}

/// Waits until `leadership` says this node leads; returns the term.
pub(super) async fn elected(leadership: &mut watch::Receiver<crate::services::leadership::Leadership>) -> Option<i64> {
    loop {
        if let Some(term) = leadership.borrow_and_update().leads_now() {
            return Some(term);
        }
        leadership.changed().await.ok()?;
    }
}
