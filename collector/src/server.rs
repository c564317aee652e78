//! `pikett-collector serve`: the wiring. Opens the storage engine and every service on
//! it (ingest log, fault engine, pager, incidents, patches), starts the group-commit
//! writer, the gRPC services (with TLS when configured), the HTTP endpoint, and the
//! clock tick. Nothing here decides anything: it connects the layers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use pikett_proto::v1::admin_server::AdminServer;
use pikett_proto::v1::enroll_server::EnrollServer;
use pikett_proto::v1::incidents_server::IncidentsServer;
use pikett_proto::v1::ingest_server::IngestServer;
use pikett_proto::v1::reports_server::ReportsServer;
use tokio::sync::{mpsc, watch};
use tonic::transport::Server;

use pikett_core::faults::Transition;
use pikett_core::hosts::{HostStatus, host_status, host_timeout};

use crate::api::access::Access;
use crate::api::admin::AdminService;
use crate::api::enroll::EnrollService;
use crate::api::incidents::IncidentsGrpc;
use crate::api::ingest::IngestService;
use crate::config::CollectorConfig;
use crate::services::audit::AuditLog;
use crate::services::batches::BatchLog;
use crate::services::faults::FaultService;
use crate::services::identity::IdentityService;
use crate::services::incidents::IncidentService;
use crate::services::latest::LatestSamples;
use crate::services::leadership::{self, ClusterView, StandaloneLease, Timing};
use crate::services::metrics::{Metrics, ReasonLabel, StatusLabel};
use crate::services::pki::Ca;
use crate::services::retention::Retention;
use crate::services::staff::StaffTokens;
use crate::services::writer::spawn_writer;
use crate::store::batch_files::{self, BatchFiles};
use crate::store::{NodeInfo, SledStorage, Storage};

/// Largest message accepted from an agent (a batch). The agent cuts a batch at 5,000
/// observations (a few hundred KiB; 2 MiB with long Redfish inventory); 16 MiB leaves
/// room without letting one message hold much memory. Larger ones are refused with
/// `OUT_OF_RANGE` ("message length too large") before they are decoded.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// The leader lease's ttl (the design's default `lease_ttl`; no `[store]` section yet).
const LEASE_TTL: Duration = Duration::from_secs(5);

/// This collector's name in the cluster table: the host name, or the gRPC listen address
/// when there is none.
fn node_name(config: &CollectorConfig) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    if host.is_empty() { config.listen.to_string() } else { host }
}

pub async fn serve(config: CollectorConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    serve_from(config, None, shutdown).await
}

/// [`serve`], with the file the configuration came from: SIGHUP reloads it
/// ([`crate::services::reload`]).
pub async fn serve_from(
    config: CollectorConfig,
    config_path: Option<std::path::PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let storage: Arc<dyn Storage> =
        Arc::new(SledStorage::open_with(&config.data_dir, config.store_cache_bytes, config.store_fsync)?);
    let files = BatchFiles::open(
        &config.data_dir.join(batch_files::DIR),
        batch_files::span_for(config.retention.batches),
        config.store_fsync,
    )?;
    let store = Arc::new(BatchLog::open(storage.clone(), files)?);
    let identity = Arc::new(IdentityService::open(storage.clone())?);
    let tokens = Arc::new(StaffTokens::open(&config.tokens_path())?);
    let audit = Arc::new(AuditLog::open(storage.clone())?);
    let access = Arc::new(Access::new(tokens, audit.clone()));
    let ca = match config.tls.as_ref().and_then(|t| t.ca_key_file.as_ref().zip(t.client_ca_file.as_ref())) {
        Some((key, cert)) => Some(Arc::new(Ca::load(cert, key)?)),
        None => None,
    };
    let engine_config = config.engine_config().map_err(anyhow::Error::msg)?;
    let faults = Arc::new(FaultService::open(storage.as_ref(), engine_config)?);
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
    let (transitions_tx, mut transitions_rx) = mpsc::unbounded_channel::<Vec<Transition>>();
    let (pager_tx, pager_rx) = mpsc::unbounded_channel();
    let pager = crate::services::pager::spawn(&config, storage.clone(), faults.clone(), metrics.clone(), pager_rx)?;
    let incidents = Arc::new(IncidentService::open(storage.clone(), &config, faults.clone(), pager.clone()).await?);
    // Fault transitions fan out: to the pager first, then to the incidents.
    let fan_out = incidents.clone();
    tokio::spawn(async move {
        while let Some(batch) = transitions_rx.recv().await {
            let _ = pager_tx.send(batch.clone());
            fan_out.on_transitions(&batch).await;
        }
    });
    let patches = Arc::new(crate::services::patches::PatchService::from_config(storage.as_ref(), &config)?);
    let writer = spawn_writer(
        store.clone(),
        faults.clone(),
        patches.clone(),
        metrics.clone(),
        transitions_tx.clone(),
        config.store_commit_window,
    );
    if let Some(rw) = &config.remote_write {
        crate::remote_write::spawn(rw, config.retention.batches, store.clone(), metrics.clone(), shutdown.clone())?;
    }
    crate::services::patches::spawn_evaluator(patches.clone(), faults.clone(), storage.clone(), transitions_tx.clone());
    let reports = crate::api::reports::ReportsService::new(
        &config,
        store.clone(),
        faults.clone(),
        patches,
        access.clone(),
        pager.clone(),
    )?;
    let sla_inputs = reports.sla_inputs();
    let ready = Arc::new(AtomicBool::new(false));
    let status_links = Arc::new(crate::services::status_links::StatusLinks::open(storage.clone())?);
    let status_pages = Arc::new(crate::api::status_page::StatusPages {
        links: status_links.clone(),
        store: store.clone(),
        faults: faults.clone(),
        incidents: incidents.clone(),
        pager: pager.clone(),
        sla: sla_inputs.clone(),
        host_timeout: config.host_timeout,
    });

    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("http_listen {}: cannot listen", config.http_listen))?;
    let app = crate::api::http::router(crate::api::http::HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        latest: latest.clone(),
        faults: faults.clone(),
        staleness: config.metrics_staleness,
        storage: storage.clone(),
        batches: store.clone(),
        data_dir: config.data_dir.clone(),
        status_pages,
    })
    .merge(crate::api::http::receipts_router(pager.receipts(), metrics.clone()));
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

    let mut builder = Server::builder()
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
        store: store.clone(),
        identity: identity.clone(),
        writer,
        metrics: metrics.clone(),
        require_client_cert,
        latest,
        shutdown: shutdown.clone(),
    };
    let enroll = EnrollService {
        ca: ca.clone(),
        identity: identity.clone(),
        validity: config.tls.as_ref().map_or(Duration::from_secs(90 * 86_400), |t| t.client_cert_validity),
    };
    let pager_for_retention = pager.clone();
    let pager_for_reload = pager.clone();
    let reloader_slot = Arc::new(std::sync::OnceLock::new());
    // The embedded setup is one collector: always the leader (HA design, step 11). The
    // task heartbeats, so `pikett status` shows this node with its last heartbeat.
    let cluster = ClusterView { lease: Arc::new(StandaloneLease::new()), ttl: LEASE_TTL, standalone: true };
    let admin = AdminService {
        store: store.clone(),
        faults: faults.clone(),
        pager,
        host_timeout: config.host_timeout,
        transitions: transitions_tx.clone(),
        access: access.clone(),
        identity,
        ca,
        reloader: reloader_slot.clone(),
        status_links,
        cluster: cluster.clone(),
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen {}: cannot listen", config.listen))?;

    Retention {
        config: config.retention.clone(),
        batches: store.clone(),
        faults: faults.clone(),
        pager: pager_for_retention,
        incidents: incidents.clone(),
        audit,
        metrics: metrics.clone(),
    }
    .spawn();
    // The collector's own disk, as faults of its pseudo-host.
    let (own, dir, tx) = (faults.clone(), config.data_dir.clone(), transitions_tx.clone());
    let (warn, crit, every) =
        (config.data_dir_warn_free_percent, config.data_dir_crit_free_percent, config.self_check_interval);
    let own_store = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let changes = crate::services::self_check::check_disk(&own, &dir, warn, crit, jiff::Timestamp::now());
            if !changes.is_empty() {
                if let Err(e) = own_store.flush().await {
                    crate::services::storage_failure::stop("recording the collector's own disk check", &e);
                }
                let _ = tx.send(changes);
            }
        }
    });
    // The watchdog (WatchdogSec=) is fed while the clock turns: it takes the store and the
    // fault engine every second, so a deadlock or a hung disk there gets the collector
    // restarted.
    let heartbeats = pikett_support::service::Heartbeats::new();
    let clock_beat = heartbeats.register("clock", Duration::from_secs(3));
    tokio::spawn(clock_tick(
        store.clone(),
        faults.clone(),
        metrics.clone(),
        config.host_timeout,
        transitions_tx,
        clock_beat,
    ));
    tokio::spawn(heartbeats.feed_watchdog());

    let reloader =
        Arc::new(crate::services::reload::Reloader::new(config_path, config.clone(), faults.clone(), pager_for_reload));
    let _ = reloader_slot.set(reloader.clone());
    tokio::spawn(reload_on_sighup(reloader.clone(), metrics.clone(), store.clone()));

    let node = node_name(&config);
    let info = NodeInfo { addr: config.listen.to_string(), version: env!("CARGO_PKG_VERSION").to_string() };
    let mut leadership_stop = shutdown.clone();
    let (_leadership, leadership_task) =
        leadership::spawn(cluster.lease, node, info, Timing::for_ttl(LEASE_TTL), async move {
            let _ = leadership_stop.wait_for(|stop| *stop).await;
        });

    ready.store(true, Ordering::Release);
    pikett_support::service::notify_ready(&status_line(&metrics, &store));
    let (status_metrics, status_store) = (metrics.clone(), store.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            every.tick().await;
            pikett_support::service::notify_status(&status_line(&status_metrics, &status_store));
        }
    });
    tracing::info!(listen = %config.listen, http = %config.http_listen, tls = config.tls.is_some(), data_dir = %config.data_dir.display(), "collector serving");
    // The standard services other tools expect: grpc.health.v1 (load balancers, grpc-health-probe)
    // and server reflection (grpcurl, Postman) over every pikett service.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IngestServer<crate::api::ingest::IngestService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pikett_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both versions: grpcurl asks v1 first, many clients (grpcio's) only know v1alpha.
    let reflection_v1 = reflection().build_v1().context("gRPC reflection")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("gRPC reflection")?;
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(IngestServer::new(ingest).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(AdminServer::new(admin))
        .add_service(ReportsServer::new(reports))
        .add_service(IncidentsServer::new(IncidentsGrpc { incidents, access, sla: sla_inputs }))
        .add_service(EnrollServer::new(enroll));
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
    // The task saw the signal too: let it give the lease up.
    if tokio::time::timeout(LEASE_TTL, leadership_task).await.is_err() {
        tracing::warn!("the leadership task did not stop in time");
    }
    store.flush().await?;
    tracing::info!("collector stopped");
    Ok(())
}

/// SIGHUP (`systemctl reload`): reloads the configuration file; an invalid one is
/// refused and logged with every error, the configuration in force stays.
async fn reload_on_sighup(
    reloader: Arc<crate::services::reload::Reloader>,
    metrics: Arc<Metrics>,
    store: Arc<BatchLog>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: reload needs a restart");
        return;
    };
    while hup.recv().await.is_some() {
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
        pikett_support::service::notify_ready(&status_line(&metrics, &store));
    }
}

/// The `STATUS=` line `systemctl status` shows: agents streaming, hosts known.
fn status_line(metrics: &Metrics, store: &BatchLog) -> String {
    format!("serving; {} agent streams, {} hosts", metrics.streams.get(), store.active_hosts().len())
}

/// How long, after SIGTERM, calls other than agent streams may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The clock's side of the fault engine (host timeouts, maintenance and
/// silence boundaries) and the host status gauges, once a second.
async fn clock_tick(
    store: Arc<BatchLog>,
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
            if let Err(e) = store.flush().await {
                tracing::error!(error = %e, "cannot flush fault state");
            }
            let _ = transitions.send(changes);
        }
        let now_ms = now.as_millisecond();
        let up = hosts.iter().filter(|h| host_status(h, now_ms, configured_timeout) == HostStatus::Up).count();
        metrics.hosts.get_or_create(&StatusLabel { status: "up".into() }).set(up as i64);
        metrics.hosts.get_or_create(&StatusLabel { status: "down".into() }).set((hosts.len() - up) as i64);
    }
}
