//! `pikett-collector serve`: the wiring. Opens the storage engine and the services every
//! node runs (the ingest log and its group-commit writer, enrollment, staff access, the
//! leadership task), the gRPC services (with TLS when configured) and the HTTP endpoint;
//! the services that decide and page are the leader's ([`leader`]), started when this node
//! leads. Nothing here decides anything: it connects the layers.
//!
//! With sled (the embedded default) the one collector leads from the start. On PostgreSQL
//! every node stores and acknowledges batches; the node that takes the lease opens the
//! leader's state from the database (fenced by its term), evaluates the stored batches by
//! cursor (`services::evaluator`), and serves the staff API; the others answer staff calls
//! with the leader's address (`api::leader_gate`). A leader that loses its lease exits with
//! status 75 at once: the restart comes back as a follower with nothing stale in memory.

mod leader;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use pikett_proto::rx::ingest_server::IngestServer;
use pikett_proto::v1::admin_server::AdminServer;
use pikett_proto::v1::enroll_server::EnrollServer;
use pikett_proto::v1::incidents_server::IncidentsServer;
use pikett_proto::v1::reports_server::ReportsServer;
use tokio::sync::{Notify, watch};
use tonic::transport::Server;

use crate::api::access::Access;
use crate::api::admin::AdminService;
use crate::api::enroll::EnrollService;
use crate::api::incidents::IncidentsGrpc;
use crate::api::ingest::IngestService;
use crate::api::leader_gate::{KnownLeader, LeaderSlot};
use crate::api::reports::ReportsService;
use crate::config::{CollectorConfig, StoreKind};
use crate::services::audit::AuditLog;
use crate::services::batches::{BatchLog, BatchStore};
use crate::services::faults::FaultService;
use crate::services::identity::IdentityService;
use crate::services::latest::LatestSamples;
use crate::services::leadership::{self, ClusterView, Leadership, StandaloneLease, Timing};
use crate::services::metrics::{Metrics, ReasonLabel};
use crate::services::pki::Ca;
use crate::services::staff::StaffTokens;
use crate::services::writer::{spawn_pg_writer, spawn_writer};
use crate::store::batch_files::{self, BatchFiles};
use crate::store::pg::{PgBatches, PgConnect, PgLease, PgStorage};
use crate::store::{Lease, NodeInfo, SledStorage, Storage};

use self::leader::{LeaderContext, LeaderServices};

/// Largest message accepted from an agent (a batch). The agent cuts a batch at 5,000
/// observations (a few hundred KiB; 2 MiB with long Redfish inventory); 16 MiB leaves
/// room without letting one message hold much memory. Larger ones are refused with
/// `OUT_OF_RANGE` ("message length too large") before they are decoded.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// The exit status of a leader that lost its lease (`EX_TEMPFAIL`, as for a storage failure:
/// systemd restarts it, as a follower).
pub const EXIT_LEADERSHIP_LOST: i32 = 75;

/// The storage engine of this node.
enum Engine {
    /// The embedded setup: sled and the batch files in `data_dir`, one collector.
    Sled { storage: Arc<dyn Storage>, log: Arc<BatchLog> },
    /// A cluster on PostgreSQL. `storage` holds what every node writes for itself
    /// (enrollments, the audit log); the leader's state is opened at takeover.
    Postgres { storage: Arc<PgStorage>, batches: Arc<PgBatches>, connect: Box<PgConnect> },
}

impl Engine {
    async fn open(config: &CollectorConfig, node: &str) -> anyhow::Result<Engine> {
        match config.store.kind {
            StoreKind::Sled => {
                let storage: Arc<dyn Storage> =
                    Arc::new(SledStorage::open_with(&config.data_dir, config.store_cache_bytes, config.store_fsync)?);
                let files = BatchFiles::open(
                    &config.data_dir.join(batch_files::DIR),
                    batch_files::span_for(config.retention.batches),
                    config.store_fsync,
                )?;
                let log = Arc::new(BatchLog::open(storage.clone(), files)?);
                Ok(Engine::Sled { storage, log })
            }
            StoreKind::Postgres => {
                // Still this node's own directory: staff tokens, the disk self-check.
                std::fs::create_dir_all(&config.data_dir)
                    .with_context(|| format!("data_dir {}: cannot create", config.data_dir.display()))?;
                let connect =
                    config.pg_connect().map_err(anyhow::Error::msg)?.context("[store] kind = \"postgres\"")?;
                let storage = Arc::new(open_retrying("the node's storage", || PgStorage::open(connect.clone())).await?);
                let batches =
                    Arc::new(open_retrying("the batch store", || PgBatches::open(connect.clone(), node)).await?);
                batches.spawn_refresh(Duration::from_secs(1));
                Ok(Engine::Postgres { storage, batches, connect: Box::new(connect) })
            }
        }
    }

    fn storage(&self) -> Arc<dyn Storage> {
        match self {
            Engine::Sled { storage, .. } => storage.clone(),
            Engine::Postgres { storage, .. } => storage.clone(),
        }
    }

    fn batches(&self) -> Arc<dyn BatchStore> {
        match self {
            Engine::Sled { log, .. } => log.clone(),
            Engine::Postgres { batches, .. } => batches.clone(),
        }
    }
}

/// How long start-up waits for the database (a collector started with it, or restarted
/// while it restarts) before it gives up and lets systemd try again.
const DATABASE_WAIT: Duration = Duration::from_secs(30);

/// Opens `what`, retrying while the database cannot be reached, for up to [`DATABASE_WAIT`].
async fn open_retrying<T, F: Future<Output = Result<T, crate::store::StoreError>>>(
    what: &str,
    mut open: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    loop {
        match open().await {
            Ok(opened) => return Ok(opened),
            Err(e) if started.elapsed() < DATABASE_WAIT => {
                tracing::warn!(error = %e, "cannot open {what} on PostgreSQL yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("opening {what} on PostgreSQL"))),
        }
    }
}

pub async fn serve(config: CollectorConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    serve_from(config, None, shutdown).await
}

/// The leader-only interfaces, published when this node leads.
#[derive(Default)]
struct Slots {
    admin: LeaderSlot<AdminServer<AdminService>>,
    reports: LeaderSlot<ReportsServer<ReportsService>>,
    incidents: LeaderSlot<IncidentsServer<IncidentsGrpc>>,
    http: LeaderSlot<axum::Router>,
    faults: LeaderSlot<Arc<FaultService>>,
    enroll: LeaderSlot<EnrollServer<EnrollService>>,
    /// The leader's state, flushed at a clean stop before the lease is given up.
    storage: LeaderSlot<Arc<dyn Storage>>,
    /// The node's own storage once it leads (fenced): closed at a clean stop like the state.
    node_storage: LeaderSlot<Arc<PgStorage>>,
    /// The leader's state as a PostgreSQL storage (to close it at a clean stop).
    pg_state: LeaderSlot<Arc<PgStorage>>,
}

impl Slots {
    fn publish(&self, leader: &LeaderServices) {
        self.faults.publish(leader.faults.clone());
        self.http.publish(leader.http.clone());
        self.reports.publish(leader.reports.clone());
        self.incidents.publish(leader.incidents.clone());
        self.admin.publish(leader.admin.clone());
    }
}

/// [`serve`], with the file the configuration came from: SIGHUP reloads it
/// ([`crate::services::reload`]).
pub async fn serve_from(
    config: CollectorConfig,
    config_path: Option<std::path::PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let node = config.node_id();
    let engine = Engine::open(&config, &node).await?;
    let storage = engine.storage();
    let batches = engine.batches();
    let identity = Arc::new(IdentityService::open(storage.clone())?);
    let tokens = Arc::new(StaffTokens::open(&config.tokens_path())?);
    let audit = Arc::new(AuditLog::open(storage.clone())?);
    let access = Arc::new(Access::new(tokens, audit.clone()));
    let ca = match config.tls.as_ref().and_then(|t| t.ca_key_file.as_ref().zip(t.client_ca_file.as_ref())) {
        Some((key, cert)) => Some(Arc::new(Ca::load(cert, key)?)),
        None => None,
    };
    let latest = Arc::new(LatestSamples::new(config.max_series_per_host));
    // Stale series go on their own schedule, not only when Prometheus scrapes.
    let (sweep, staleness) = (latest.clone(), config.metrics_staleness.as_millis() as i64);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            sweep.sweep(jiff::Timestamp::now().as_millisecond(), staleness);
        }
    });
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));

    // Leadership: the lease (sled: always this node's) and every node's heartbeat.
    let (lease, standalone): (Arc<dyn Lease>, bool) = match &engine {
        Engine::Sled { .. } => (Arc::new(StandaloneLease::new()), true),
        Engine::Postgres { connect, .. } => (Arc::new(PgLease::new(PgConnect::clone(connect))), false),
    };
    let ttl = config.store.lease_ttl;
    let cluster = ClusterView { lease: lease.clone(), ttl, standalone };
    let advertise = config.store.advertise.clone().unwrap_or_else(|| config.listen.to_string());
    let info = NodeInfo { addr: advertise, version: env!("CARGO_PKG_VERSION").to_string() };
    // The lease is given up at a clean stop only after the leader's state is flushed (a
    // flush after the release would be fenced).
    let (release_tx, mut release_rx) = watch::channel(false);
    let (leadership, leadership_task) = leadership::spawn_with(
        lease,
        node.clone(),
        info,
        Timing::for_ttl(ttl),
        async move {
            let _ = release_rx.wait_for(|release| *release).await;
        },
        Some(shutdown.clone()),
    );
    let known_leader = spawn_known_leader(cluster.clone(), shutdown.clone());
    let slots = Arc::new(Slots::default());
    // The watchdog (WatchdogSec=) is fed while the clock turns: it takes the store and the
    // fault engine every second, so a deadlock or a hung disk there gets the collector
    // restarted. A follower has no clock: its leadership task beats instead.
    let heartbeats = pikett_support::service::Heartbeats::new();
    let (health, health_service) = tonic_health::server::health_reporter();

    // Enrollment writes the one-time tickets: the leader alone enrolls, so a ticket is used once.
    let enroll = EnrollServer::new(EnrollService {
        ca: ca.clone(),
        identity: identity.clone(),
        validity: config.tls.as_ref().map_or(Duration::from_secs(90 * 86_400), |t| t.client_cert_validity),
    });
    let reloader = Arc::new(std::sync::OnceLock::<Arc<crate::services::reload::Reloader>>::new());
    let cx = |storage: Arc<dyn Storage>, term: i64, escalate_when: Option<watch::Receiver<bool>>| LeaderContext {
        config: config.clone(),
        config_path: config_path.clone(),
        storage,
        batches: batches.clone(),
        metrics: metrics.clone(),
        access: access.clone(),
        audit: audit.clone(),
        identity: identity.clone(),
        ca: ca.clone(),
        cluster: cluster.clone(),
        leadership: (!standalone).then(|| (leadership.clone(), term)),
        escalate_when,
    };
    let writer = match &engine {
        Engine::Sled { storage, log } => {
            // The one collector leads from the start, and evaluates in the writer.
            let leader = LeaderServices::start(cx(storage.clone(), 0, None)).await?;
            let writer = spawn_writer(
                log.clone(),
                leader.faults.clone(),
                leader.patches.clone(),
                metrics.clone(),
                leader.transitions.clone(),
                config.store_commit_window,
            );
            if let Some(rw) = &config.remote_write {
                crate::remote_write::spawn(
                    rw,
                    config.retention.batches,
                    log.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                )?;
            }
            leader.start_clock(heartbeats.register("clock", Duration::from_secs(3)));
            slots.publish(&leader);
            slots.enroll.publish(enroll.clone());
            let _ = reloader.set(leader.reloader.clone());
            health.set_serving::<AdminServer<AdminService>>().await;
            writer
        }
        Engine::Postgres { batches, connect, storage: node_storage } => {
            // Enrollments and revocations are written by the leader: every node reads them
            // again every 2 s (a revoked certificate is refused everywhere within that).
            let (refresh_storage, refresh_identity) = (node_storage.clone(), identity.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(IDENTITY_REFRESH);
                let mut failing = false;
                loop {
                    every.tick().await;
                    match refresh_identities(&refresh_storage, &refresh_identity).await {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "cannot read the enrollments again; retrying");
                        }
                        Err(_) => {}
                    }
                }
            });
            let stored = Arc::new(Notify::new());
            let writer = spawn_pg_writer(batches.clone(), metrics.clone(), stored.clone());
            health.set_not_serving::<AdminServer<AdminService>>().await;
            let takeover = Takeover {
                connect: PgConnect::clone(connect),
                batches: batches.clone(),
                node: node.clone(),
                gap_grace: config.store.gap_grace,
                stored,
                slots: slots.clone(),
                reloader: reloader.clone(),
                health: health.clone(),
                clock_beat: heartbeats.register("clock", Duration::from_secs(3)),
                metrics: metrics.clone(),
                stopping: shutdown.clone(),
                config_path: config_path.clone(),
                enroll: enroll.clone(),
                node_storage: node_storage.clone(),
                identity: identity.clone(),
            };
            // The term and the backlog's end are set at takeover.
            let leader_cx = cx(storage.clone(), 0, None);
            let (takeover_node, takeover_leadership) = (node.clone(), leadership.clone());
            tokio::spawn(async move {
                // A panic while taking over would leave a node that renews the lease and
                // does nothing with it: it steps down instead.
                let run = tokio::spawn(takeover.run(takeover_leadership.clone(), leader_cx)).await;
                if let Err(e) = run
                    && e.is_panic()
                {
                    let term = takeover_leadership.borrow().term().unwrap_or(0);
                    lost(&takeover_node, term, "the takeover task panicked");
                }
            });
            writer
        }
    };
    tokio::spawn(reload_on_sighup(reloader.clone(), metrics.clone(), batches.clone()));

    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("http_listen {}: cannot listen", config.http_listen))?;
    let app = crate::api::http::router(crate::api::http::HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        latest: latest.clone(),
        faults: slots.faults.subscribe(),
        staleness: config.metrics_staleness,
        storage: storage.clone(),
        batches: batches.clone(),
        data_dir: config.data_dir.clone(),
        leader_http: slots.http.subscribe(),
        leadership: leadership.clone(),
    });
    let mut http_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let r = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.changed().await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP endpoint failed");
        }
    });

    let builder = Server::builder()
        // One agent needs one stream, the CLI a few: a connection cannot open hundreds.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true);
    // TLS is done by `api::listener` (handshake deadline, limits per peer); client
    // certificates are optional there so the staff CLI can connect without one, and the
    // ingest service itself insists on one.
    let tls_config = match &config.tls {
        Some(tls) => {
            Some(crate::api::listener::server_config(&tls.cert_file, &tls.key_file, tls.client_ca_file.as_deref())?)
        }
        None => None,
    };
    let require_client_cert = config.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
    let ingest = IngestService {
        store: batches.clone(),
        identity: identity.clone(),
        writer,
        metrics: metrics.clone(),
        require_client_cert,
        latest,
        shutdown: shutdown.clone(),
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen {}: cannot listen", config.listen))?;
    tokio::spawn(heartbeats.feed_watchdog());

    ready.store(true, Ordering::Release);
    // The role is shown in a cluster only (the embedded collector always leads).
    let role = (!standalone).then(|| leadership.clone());
    pikett_support::service::notify_ready(&status_line(
        &metrics,
        batches.as_ref(),
        role.as_ref().map(|r| r.borrow().clone()).as_ref(),
    ));
    let (status_metrics, status_store) = (metrics.clone(), batches.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            every.tick().await;
            let leadership = role.as_ref().map(|r| r.borrow().clone());
            pikett_support::service::notify_status(&status_line(
                &status_metrics,
                status_store.as_ref(),
                leadership.as_ref(),
            ));
        }
    });
    tracing::info!(listen = %config.listen, http = %config.http_listen, tls = config.tls.is_some(), data_dir = %config.data_dir.display(), node = %node, store = ?config.store.kind, "collector serving");
    // The standard services other tools expect: grpc.health.v1 (load balancers, grpc-health-probe)
    // and server reflection (grpcurl, Postman) over every pikett service.
    health.set_serving::<IngestServer<crate::api::ingest::IngestService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pikett_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both versions: grpcurl asks v1 first, many clients (grpcio's) only know v1alpha.
    let reflection_v1 = reflection().build_v1().context("gRPC reflection")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("gRPC reflection")?;
    let mut builder = builder;
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(IngestServer::new(ingest).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(slots.admin.gate(&node, known_leader.clone()))
        .add_service(slots.reports.gate(&node, known_leader.clone()))
        .add_service(slots.incidents.gate(&node, known_leader.clone()))
        .add_service(slots.enroll.gate(&node, known_leader));
    let mut stopping = shutdown.clone();
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
    };
    let served = async move {
        match tls_config {
            Some(tls_config) => {
                let refused = metrics.clone();
                let accepted = crate::api::listener::accept(listener, tls_config, move |reason| {
                    refused.rejected_connections_total.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
                });
                router.serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(accepted), stop).await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), stop)
                    .await
            }
        }
    };
    // Streams end on the signal (IngestService); a client that keeps any other call open
    // gets STOP_GRACE, then the server is dropped with its connections.
    tokio::select! {
        served = served => served.context("gRPC server")?,
        _ = async {
            let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
            tokio::time::sleep(STOP_GRACE).await;
        } => tracing::warn!(grace = ?STOP_GRACE, "calls still open after the grace period; closing them"),
    }
    ready.store(false, Ordering::Release);
    if let Engine::Sled { log, .. } = &engine {
        log.flush().await?;
    } else {
        if let Some(leader_state) = slots.storage.get()
            && let Err(e) = leader_state.flush().await
        {
            tracing::warn!(error = %e, "cannot flush the leader's state at the stop");
        }
        storage.flush().await?;
        // The leader's tasks still run until the process ends: from here on their writes are
        // dropped (as a crash would drop them) instead of failing on the fence of the term
        // this node is about to give up.
        if let Engine::Postgres { storage: node_storage, .. } = &engine {
            node_storage.close_for_writes();
        }
        if let Some(leader_state) = slots.pg_state.get() {
            leader_state.close_for_writes();
        }
    }
    // Then the lease goes, so another collector takes over at once.
    release_tx.send_replace(true);
    if tokio::time::timeout(ttl, leadership_task).await.is_err() {
        tracing::warn!("the leadership task did not stop in time");
    }
    tracing::info!("collector stopped");
    Ok(())
}

/// What a node on PostgreSQL does when it is elected: open the leader's state, evaluate the
/// backlog, then serve as the leader until the lease is lost, and exit then.
struct Takeover {
    connect: PgConnect,
    batches: Arc<PgBatches>,
    node: String,
    gap_grace: Duration,
    /// Notified by the local writer after each commit.
    stored: Arc<Notify>,
    slots: Arc<Slots>,
    reloader: Arc<std::sync::OnceLock<Arc<crate::services::reload::Reloader>>>,
    health: tonic_health::server::HealthReporter,
    clock_beat: pikett_support::service::Beat,
    metrics: Arc<Metrics>,
    enroll: EnrollServer<EnrollService>,
    /// Set at SIGTERM: losing the lease then is the clean stop's release, not a failure.
    stopping: watch::Receiver<bool>,
    /// Read again at takeover: the file may have changed (SIGHUP) since this node started.
    config_path: Option<std::path::PathBuf>,
    /// The node's own storage and the enrollments read from it: read again before this node
    /// enrolls, so it knows the previous leader's last enrollments and used tickets.
    node_storage: Arc<PgStorage>,
    identity: Arc<IdentityService>,
}

impl Takeover {
    async fn run(self, mut leadership: watch::Receiver<Leadership>, mut cx: LeaderContext) {
        // The clock does not turn on a follower: its beat comes from here until then.
        let beat = self.clock_beat.clone();
        let follower_beat = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                beat.beat();
            }
        });
        let Some(term) = leader::elected(&mut leadership).await else { return };
        tracing::info!(node = %self.node, term, "this collector leads now: opening the leader's state");
        if let Some(path) = &self.config_path {
            match CollectorConfig::load(path) {
                Ok(config) => cx.config = config,
                Err(errors) => {
                    for e in &errors {
                        tracing::error!(error = %e, "the configuration file is invalid; leading with the one read at start");
                    }
                }
            }
        }
        // Opened after the lease was taken: the acquire waited for every fenced transaction
        // of the previous term, so this reads the old leader's last word.
        let storage = match PgStorage::open(self.connect.clone()).await {
            Ok(s) => Arc::new(s),
            Err(e) => lost(&self.node, term, &format!("cannot open the leader's state: {e}")),
        };
        storage.fence_with(&self.node, term);
        // Followers never write the node's storage (staff calls and enrollment are the
        // leader's); from now on this node's writes there hold only while it leads, so a
        // woken deposed leader cannot undo the next one's revocation.
        self.node_storage.fence_with(&self.node, term);
        cx.storage = storage.clone();
        cx.leadership = Some((leadership.clone(), term));
        let (backlog_done_tx, backlog_done) = watch::channel(false);
        cx.escalate_when = Some(backlog_done);
        let leader = match LeaderServices::start(cx).await {
            Ok(l) => l,
            Err(e) => lost(&self.node, term, &format!("cannot start the leader's services: {e:#}")),
        };
        let parts = crate::services::evaluator::EvaluatorParts {
            batches: self.batches.clone(),
            storage: storage.clone(),
            faults: leader.faults.clone(),
            patches: leader.patches.clone(),
            metrics: self.metrics.clone(),
            transitions: leader.transitions.clone(),
            node: self.node.clone(),
            term,
            gap_grace: self.gap_grace,
            wake: self.stored.clone(),
        };
        let evaluator = match crate::services::evaluator::Evaluator::open(parts) {
            Ok(e) => e,
            Err(e) => lost(&self.node, term, &format!("cannot open the evaluator: {e}")),
        };
        let (mut caught_up, mut evaluating) = crate::services::evaluator::spawn(evaluator);
        self.slots.publish(&leader);
        // What the previous leader wrote last: enrollments, used tickets, the audit log.
        while let Err(e) = async {
            refresh_identities(&self.node_storage, &self.identity).await?;
            self.node_storage.refresh_tree("audit").await?;
            anyhow::Ok(())
        }
        .await
        {
            tracing::warn!(error = %e, "cannot read the enrollments and the audit log before enrolling; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.slots.enroll.publish(self.enroll.clone());
        self.slots.storage.publish(storage.clone());
        self.slots.node_storage.publish(self.node_storage.clone());
        self.slots.pg_state.publish(storage.clone());
        let _ = self.reloader.set(leader.reloader.clone());
        self.health.set_serving::<AdminServer<AdminService>>().await;
        let leading = async {
            loop {
                if leadership.borrow_and_update().leads_now() != Some(term) {
                    return;
                }
                // Wakes at the deadline too: a stale watch value is never trusted.
                let until = match &*leadership.borrow() {
                    Leadership::Leader { until, .. } => *until,
                    Leadership::Follower { .. } => return,
                };
                tokio::select! {
                    changed = leadership.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
            }
        };
        tokio::pin!(leading);
        tokio::select! {
            done = caught_up.wait_for(|done| *done) => {
                if done.is_err() {
                    // The evaluator ended (a panic): nothing would be evaluated any more.
                    return self.lost(term, "the evaluator stopped before the backlog was evaluated");
                }
                follower_beat.abort();
                tracing::info!(node = %self.node, term, "the stored batches are evaluated: the clock and the escalations start");
                backlog_done_tx.send_replace(true);
                leader.start_clock(self.clock_beat.clone());
            }
            _ = &mut leading => return self.lost(term, "the lease ran out before the backlog was evaluated"),
            _ = &mut evaluating => return self.lost(term, "the evaluator stopped"),
        }
        tokio::select! {
            _ = &mut leading => self.lost(term, "the lease was lost"),
            _ = &mut evaluating => self.lost(term, "the evaluator stopped"),
        }
    }

    /// [`lost`], unless the collector is stopping (then the lease was released on purpose).
    fn lost(&self, term: i64, why: &str) {
        if !*self.stopping.borrow() {
            lost(&self.node, term, why);
        }
    }
}

/// How often a node of a cluster reads the enrollments again.
const IDENTITY_REFRESH: Duration = Duration::from_secs(2);

/// Reads the enrollments and used tickets of every node again.
async fn refresh_identities(storage: &PgStorage, identity: &IdentityService) -> anyhow::Result<()> {
    storage.refresh_tree("identities").await?;
    storage.refresh_tree("tickets_used").await?;
    identity.reload()?;
    Ok(())
}

/// A leader that lost its lease (or could not take over) exits: whatever it holds in memory
/// is stale, and its writes are fenced anyway. systemd restarts it as a follower.
fn lost(node: &str, term: i64, why: &str) -> ! {
    tracing::error!(node, term, why, "stepping down: exiting so that the restart comes back as a follower");
    eprintln!("pikett-collector: node {node}, term {term}: {why}; exiting (status {EXIT_LEADERSHIP_LOST})");
    std::process::exit(EXIT_LEADERSHIP_LOST)
}

/// Keeps who leads (node and address) for the redirects of a follower, read from the cluster
/// table every second.
fn spawn_known_leader(cluster: ClusterView, mut shutdown: watch::Receiver<bool>) -> watch::Receiver<KnownLeader> {
    let (tx, rx) = watch::channel(KnownLeader::default());
    if cluster.standalone {
        return rx;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), cluster.lease.cluster()).await else {
                continue;
            };
            let node = c.leader().map(str::to_string);
            let addr = node.as_deref().and_then(|n| c.nodes.iter().find(|r| r.node == n)).map(|r| r.addr.clone());
            tx.send_if_modified(|known| {
                let new = KnownLeader { node, addr };
                let changed = *known != new;
                *known = new;
                changed
            });
        }
    });
    rx
}

/// SIGHUP (`systemctl reload`): reloads the configuration file; an invalid one is
/// refused and logged with every error, the configuration in force stays. A follower has
/// nothing to reload yet: it reads the file when it takes over.
async fn reload_on_sighup(
    reloader: Arc<std::sync::OnceLock<Arc<crate::services::reload::Reloader>>>,
    metrics: Arc<Metrics>,
    store: Arc<dyn BatchStore>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: reload needs a restart");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(reloader) = reloader.get() else {
            tracing::info!("SIGHUP on a follower: the configuration is read when this collector takes over");
            continue;
        };
        pikett_support::service::notify_reloading();
        match reloader.reload() {
            Ok(r) if r.restart_needed.is_empty() => tracing::info!("configuration reloaded"),
            Ok(r) => tracing::warn!(
                restart_needed = ?r.restart_needed,
                "configuration reloaded; these changes take effect only at the next restart"
            ),
            Err(errors) => {
                for e in &errors {
                    tracing::error!(error = %e, "configuration reload refused; the configuration in force stays");
                }
            }
        }
        pikett_support::service::notify_ready(&status_line(&metrics, store.as_ref(), None));
    }
}

/// The `STATUS=` line `systemctl status` shows: agents streaming, hosts known, the role.
fn status_line(metrics: &Metrics, store: &dyn BatchStore, leadership: Option<&Leadership>) -> String {
    let role = match leadership {
        None => String::new(),
        Some(Leadership::Leader { .. }) => "; leader".to_string(),
        Some(Leadership::Follower { leader: Some(l) }) => format!("; follower of {l}"),
        Some(Leadership::Follower { leader: None }) => "; follower".to_string(),
    };
    format!("serving; {} agent streams, {} hosts{role}", metrics.streams.get(), store.active_hosts().len())
}

/// How long, after SIGTERM, calls other than agent streams may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);
