//! The pager: turns fault transitions into escalations (`pikett_core::escalation`,
//! pure) and their steps into notifications through the durable outbox
//! (`notify/`), and records every step on the fault's timeline.
//!
//! Architecture invariants:
//! - A notification is in the outbox (flushed) before it is sent; its id is
//!   the idempotency key `FAULT/STEP`, the same on every retry and restart.
//! - Escalation state (tree `escalations`) is written and flushed after every change, so a restarted
//!   collector continues each escalation where it stood.
//! - No alarm is dropped silently: a chain that ends with every delivery
//!   failed says so on the fault and raises `pikett_notifications_failed_total`.
//! - An SMS whose gateway reports delivery (`notify::receipts`) is judged by its receipt,
//!   not by the gateway's acceptance: delivered, failed, or failed at `delivery_timeout`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc;

use crate::config::{CollectorConfig, CustomerConfig};
use crate::notify::receipts::{NotificationStatus, ReceiptWorker, notification_status};
use crate::notify::{
    ChannelKind, DeliveryReport, DeliveryState, Enqueued, EntryState, Notification, NotificationKind, Outbox,
    OutcomeStatus, ReceiptTracker, SystemClock, TreeStore, Worker,
};
use crate::services::faults::FaultService;
use crate::services::metrics::Metrics;
use crate::store::{Storage, StoreError, Tree};
use pikett_core::escalation::{
    Action, Context, Escalation, EscalationConfig, NotifyKind, Severity as EscSeverity, StartMode,
};
use pikett_core::faults::{EventKind, Fault, FaultFilter, Severity, Transition};
use pikett_core::oncall::{Channel, Override, Person, Role, Rotation};
use pikett_core::reconcile::missed_transitions;

struct State {
    escalations: BTreeMap<u64, Escalation>,
    overrides: Vec<Override>,
}

pub struct Pager {
    state: Mutex<State>,
    tree: Arc<dyn Tree>,
    storage: Arc<dyn Storage>,
    outbox: Outbox,
    _worker: Mutex<Option<Worker>>,
    /// SMS awaiting their gateway's delivery receipt.
    receipts: Arc<ReceiptTracker>,
    _receipt_worker: Mutex<Option<ReceiptWorker>>,
    faults: Arc<FaultService>,
    metrics: Arc<Metrics>,
    /// The on-call plan; replaced whole by a reload ([`Pager::reload`]).
    plan: std::sync::RwLock<Arc<Plan>>,
}

/// Who is paged, how, and which customers get copies: the parts of the configuration
/// a reload changes while escalations run on.
pub struct Plan {
    pub people: BTreeMap<String, Person>,
    pub rotations: Vec<Rotation>,
    pub escalation: EscalationConfig,
    pub customers: BTreeMap<String, CustomerConfig>,
    /// SLA contracts by name (`[sla.NAME]`), for incident and SLA reports.
    pub contracts: BTreeMap<String, pikett_core::sla::Contract>,
}

impl Plan {
    fn of(config: &CollectorConfig) -> Plan {
        Plan {
            people: config.people.clone(),
            rotations: config.rotations.clone(),
            escalation: config.escalation.clone(),
            customers: config.customers.clone(),
            contracts: config.sla.clone(),
        }
    }

    /// A customer's SLA contract: (name, contract).
    pub fn contract_of(&self, customer: &str) -> Option<(&str, &pikett_core::sla::Contract)> {
        let name = self.customers.get(customer)?.sla.as_deref()?;
        self.contracts.get(name).map(|c| (name, c))
    }
}

const OVERRIDES_KEY: &[u8] = b"overrides";

fn esc_key(fault: u64) -> Vec<u8> {
    let mut k = b"e/".to_vec();
    k.extend_from_slice(&fault.to_be_bytes());
    k
}

fn channel_kind(c: Channel) -> ChannelKind {
    match c {
        Channel::Sms => ChannelKind::Sms,
        Channel::Voice => ChannelKind::Voice,
        Channel::Email => ChannelKind::Email,
        Channel::Webhook => ChannelKind::Webhook,
    }
}

fn esc_severity(s: Severity) -> EscSeverity {
    match s {
        Severity::Warning => EscSeverity::Warning,
        Severity::Critical => EscSeverity::Critical,
    }
}

/// Starts the pager: restores escalations, starts the outbox worker, and
/// consumes `transitions` and the outbox's outcomes until the process ends.
pub fn spawn(
    config: &CollectorConfig,
    storage: Arc<dyn Storage>,
    faults: Arc<FaultService>,
    metrics: Arc<Metrics>,
    transitions: mpsc::UnboundedReceiver<Vec<Transition>>,
) -> anyhow::Result<Arc<Pager>> {
    spawn_guarded(config, storage, faults, metrics, transitions, None, None)
}

/// [`spawn`] for a leader of a cluster: every notification asks `send_guard` right before it
/// goes out (see [`crate::notify::outbox::Outbox::guard_sends`]), and escalations start once
/// `escalate_when` turns true (the backlog of stored batches is evaluated).
pub fn spawn_guarded(
    config: &CollectorConfig,
    storage: Arc<dyn Storage>,
    faults: Arc<FaultService>,
    metrics: Arc<Metrics>,
    mut transitions: mpsc::UnboundedReceiver<Vec<Transition>>,
    send_guard: Option<crate::notify::outbox::SendGuard>,
    escalate_when: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<Arc<Pager>> {
    let tree = storage.tree("escalations")?;
    let mut escalations = BTreeMap::new();
    let mut overrides = Vec::new();
    for item in tree.iter() {
        let (k, v) = item?;
        if k == OVERRIDES_KEY {
            overrides = serde_json::from_slice(&v)?;
        } else if k.len() == 10 {
            let mut id = [0u8; 8];
            id.copy_from_slice(&k[2..]);
            let escalation: Escalation = serde_json::from_slice(&v)?;
            // Finished ones stay on disk only, until retention removes them with their fault.
            if !escalation.is_finished() {
                escalations.insert(u64::from_be_bytes(id), escalation);
            }
        }
    }
    let (receipts, mut delivery_reports) =
        ReceiptTracker::open(storage.clone(), Arc::new(SystemClock), config.outbox.keep_done)?;
    let channels = config.channels.build_tracked(Some(&receipts)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (outbox, mut outcomes) =
        Outbox::new(TreeStore::open(storage.clone())?, channels, config.outbox.clone(), Arc::new(SystemClock));
    if let Some(guard) = send_guard {
        outbox.guard_sends(guard);
    }
    let worker = outbox.start();
    let receipt_worker = receipts.start();
    let pager = Arc::new(Pager {
        state: Mutex::new(State { escalations, overrides }),
        tree,
        storage,
        outbox,
        _worker: Mutex::new(Some(worker)),
        receipts,
        _receipt_worker: Mutex::new(Some(receipt_worker)),
        faults,
        metrics,
        plan: std::sync::RwLock::new(Arc::new(Plan::of(config))),
    });
    let p = pager.clone();
    tokio::spawn(async move {
        // A new leader first evaluates the batches stored before it took over: escalating
        // earlier could page for a fault whose recovery is only waiting to be evaluated.
        // (Queued notifications go out meanwhile: the outbox worker runs already.)
        if let Some(mut ready) = escalate_when {
            let _ = ready.wait_for(|ready| *ready).await;
        }
        p.catch_up().await;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(batch) = transitions.recv() => p.on_transitions(batch).await,
                Some(outcome) = outcomes.recv() => p.on_outcome(outcome).await,
                Some(report) = delivery_reports.recv() => p.on_delivery_report(report).await,
                _ = tick.tick() => p.run_due(Timestamp::now()).await,
            }
        }
    });
    Ok(pager)
}

impl Pager {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The on-call plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A configuration reload: the new plan and channels apply from the next step of
    /// every escalation on. A page already sent stays sent; an escalation whose next
    /// step names a person no longer in the rotation pages whoever holds the role now.
    pub fn reload(&self, config: &CollectorConfig) -> anyhow::Result<()> {
        let channels = config.channels.build_tracked(Some(&self.receipts)).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.outbox.set_channels(channels);
        *self.plan.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Plan::of(config));
        Ok(())
    }

    /// At start-up: acts on the transitions the escalations missed while the collector was
    /// down (see `pikett_core::reconcile`), so no open fault stays without an escalation.
    async fn catch_up(&self) {
        let now = Timestamp::now();
        let missed = {
            let st = self.lock();
            self.faults.with_engine(|e| {
                let all = e.faults(&FaultFilter { all: true, ..Default::default() });
                missed_transitions(all, |id| st.escalations.get(&id).map(|e| e.status()), now)
            })
        };
        if missed.is_empty() {
            return;
        }
        tracing::warn!(count = missed.len(), "escalations behind the fault state after a restart: catching up");
        for t in &missed {
            let what = match t.kind {
                EventKind::Opened => "escalation started after a restart (the fault was open without one)",
                EventKind::Acknowledged => "escalation stopped after a restart (the fault was acknowledged)",
                _ => "escalation resolved after a restart (the fault was resolved)",
            };
            self.note(t.fault_id, what, now);
        }
        self.on_transitions(missed).await;
    }

    /// Who holds each role at `at`.
    pub fn roster(&self, at: Timestamp) -> Vec<(Role, Option<String>)> {
        let plan = self.plan();
        let st = self.lock();
        pikett_core::oncall::roster(&plan.rotations, &st.overrides, at)
            .into_iter()
            .map(|(r, p)| (r, p.map(str::to_string)))
            .collect()
    }

    /// Whether anyone is configured to be paged.
    pub fn has_people(&self) -> bool {
        !self.plan().people.is_empty()
    }

    /// Adds an on-call override (validated) and persists it.
    pub async fn add_override(&self, ov: Override) -> Result<(), String> {
        pikett_core::oncall::validate_override(&self.plan().people, &ov).map_err(|e| e.to_string())?;
        let json = {
            let mut st = self.lock();
            st.overrides.push(ov);
            serde_json::to_vec(&st.overrides).map_err(|e| e.to_string())?
        };
        self.tree.insert(OVERRIDES_KEY, json).map_err(|e| e.to_string())?;
        self.storage.flush().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Stops a fault's escalation that is still paging although the fault is already
    /// acknowledged (an emergency escalated after the ack re-pages the chain).
    /// Returns whether one was stopped.
    pub async fn stop_running(&self, fault: u64, now: Timestamp) -> bool {
        let stopped = {
            let mut st = self.lock();
            match st.escalations.get_mut(&fault) {
                Some(e) if matches!(e.status(), pikett_core::escalation::Status::Running) => {
                    e.ack(now);
                    true
                }
                _ => false,
            }
        };
        if stopped {
            self.persist(fault).await;
        }
        stopped
    }

    /// Pages the whole chain at once for these faults (an emergency).
    pub async fn escalate_emergency(&self, fault_ids: &[u64], now: Timestamp) {
        {
            let mut st = self.lock();
            for id in fault_ids {
                // A fault resolved meanwhile pages nobody (its finished escalation may have
                // left memory already, so this is checked here, not by the escalation).
                let sev = self.faults.with_engine(|e| e.fault(*id).filter(|f| !f.is_resolved()).map(|f| f.severity));
                let Some(sev) = sev else { continue };
                st.escalations.entry(*id).and_modify(|e| e.escalate_emergency(now)).or_insert_with(|| {
                    Escalation::start(&id.to_string(), esc_severity(sev), now, StartMode::Emergency)
                });
            }
        }
        self.run_due(now).await;
    }

    /// Sends a free-text notification (incident status update) to a customer's contacts.
    pub async fn notify_customer(&self, customer: &str, key: &str, subject: &str, text: &str, now: Timestamp) -> usize {
        let plan = self.plan();
        let Some(c) = plan.customers.get(customer) else { return 0 };
        let mut sent = 0;
        for (i, contact) in c.contacts.iter().enumerate() {
            for (channel, to) in [(ChannelKind::Email, &contact.email), (ChannelKind::Sms, &contact.sms)] {
                let Some(to) = to else { continue };
                let n = Notification {
                    id: format!("{key}/{i}/{}", channel.as_str()),
                    fault_id: key.to_string(),
                    kind: NotificationKind::StatusUpdate,
                    channel,
                    to: to.clone(),
                    subject: subject.to_string(),
                    text: text.to_string(),
                    host: String::new(),
                    check: String::new(),
                    severity: String::new(),
                    summary: String::new(),
                    customer: customer.to_string(),
                    emergency: true,
                    fault_opened_at: None,
                    fault_resolved_at: None,
                    created_at: now,
                };
                if self.outbox.enqueue(n).await.is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    }

    async fn on_transitions(&self, batch: Vec<Transition>) {
        // Fault injection (feature `failpoints`): widens the window between the batch flush
        // that opened a fault and its page entering the outbox, for the crash tests.
        fail::fail_point!("pager-before-enqueue");
        let now = Timestamp::now();
        for t in batch {
            let fault = self.faults.with_engine(|e| e.fault(t.fault_id).cloned());
            let Some(fault) = fault else { continue };
            let (actions, copies) = self.apply_transition(&t, &fault, now);
            self.execute(&fault, actions, now).await;
            self.persist(fault.id).await;
            self.copy_to_customer(&fault, &copies, now).await;
        }
        self.run_due(now).await;
    }

    /// The escalation's side of one transition: immediate actions and customer copies to send.
    fn apply_transition(&self, t: &Transition, fault: &Fault, now: Timestamp) -> (Vec<Action>, Vec<NotificationKind>) {
        let mut st = self.lock();
        let mut copies = Vec::new();
        let mut actions = Vec::new();
        match t.kind {
            EventKind::Opened | EventKind::Reopened | EventKind::FlappingStarted | EventKind::SuppressionEnded
                if t.page =>
            {
                let running = st
                    .escalations
                    .get(&fault.id)
                    .is_some_and(|e| matches!(e.status(), pikett_core::escalation::Status::Running));
                if !running {
                    let sev = esc_severity(fault.severity);
                    st.escalations
                        .insert(fault.id, Escalation::start(&fault.id.to_string(), sev, now, StartMode::Normal));
                    copies.push(NotificationKind::Copy);
                }
            }
            EventKind::SeverityRaised if t.page => {
                let sev = esc_severity(fault.severity);
                st.escalations
                    .entry(fault.id)
                    .and_modify(|e| e.set_severity(sev, now))
                    .or_insert_with(|| Escalation::start(&fault.id.to_string(), sev, now, StartMode::Normal));
            }
            EventKind::Acknowledged => {
                if let Some(e) = st.escalations.get_mut(&fault.id) {
                    e.ack(now);
                }
            }
            EventKind::Resolved => {
                let overrides = st.overrides.clone();
                let plan = self.plan();
                let ctx = Context {
                    people: &plan.people,
                    rotations: &plan.rotations,
                    overrides: &overrides,
                    config: &plan.escalation,
                };
                if let Some(e) = st.escalations.get_mut(&fault.id) {
                    actions = e.resolve(now, &ctx);
                    copies.push(NotificationKind::Resolved);
                }
            }
            _ => {}
        }
        (actions, copies)
    }

    /// Premium customers (`copy_alerts`) get a copy of critical alarms and their resolution.
    async fn copy_to_customer(&self, fault: &Fault, kinds: &[NotificationKind], now: Timestamp) {
        let plan = self.plan();
        let Some(customer) = plan.customers.get(&fault.customer) else { return };
        if !customer.copy_alerts || fault.severity != Severity::Critical {
            return;
        }
        for kind in kinds {
            let resolved = *kind == NotificationKind::Resolved;
            for (i, contact) in customer.contacts.iter().enumerate() {
                for (channel, to) in [(ChannelKind::Email, &contact.email), (ChannelKind::Sms, &contact.sms)] {
                    let Some(to) = to else { continue };
                    let n = self.notification(
                        fault,
                        format!(
                            "{}/copy/{}/{i}/{}",
                            fault.id,
                            if resolved { "resolved" } else { "alarm" },
                            channel.as_str()
                        ),
                        if resolved { NotificationKind::Resolved } else { NotificationKind::Copy },
                        channel,
                        to.clone(),
                        now,
                    );
                    if let Err(e) = self.outbox.enqueue(n).await {
                        tracing::error!(fault = fault.id, error = %e, "cannot queue the customer's copy");
                    }
                }
            }
            self.note(fault.id, &format!("copy sent to customer {}'s contacts", fault.customer), now);
        }
    }

    fn notification(
        &self,
        fault: &Fault,
        id: String,
        kind: NotificationKind,
        channel: ChannelKind,
        to: String,
        now: Timestamp,
    ) -> Notification {
        Notification {
            id,
            fault_id: fault.id.to_string(),
            kind,
            channel,
            to,
            subject: String::new(),
            text: String::new(),
            host: fault.host.clone(),
            check: fault.check.clone(),
            severity: serde_json::to_value(fault.severity)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            summary: fault.last_summary.clone(),
            customer: fault.customer.clone(),
            emergency: false,
            fault_opened_at: Some(fault.opened_at),
            fault_resolved_at: fault.resolved_at,
            created_at: now,
        }
    }

    async fn on_outcome(&self, outcome: crate::notify::Outcome) {
        let now = Timestamp::now();
        let Some((fault, step)) = outcome.notification_id.split_once('/') else { return };
        let Ok(fault_id) = fault.parse::<u64>() else { return };
        // An SMS whose gateway reports delivery is judged by its receipt (on_delivery_report).
        let receipt = match outcome.status {
            OutcomeStatus::Delivered { .. } => self.receipts.tracked_state(&outcome.notification_id),
            _ => None,
        };
        let judged_by_receipt = receipt.is_some();
        let text = match &outcome.status {
            OutcomeStatus::Delivered { .. } if judged_by_receipt => format!(
                "{} to {} accepted by the gateway (attempt {}){}",
                outcome.channel.as_str(),
                outcome.to,
                outcome.attempts,
                // A receipt that came before the gateway's answer has settled it already.
                if receipt == Some(DeliveryState::Awaiting) { ", awaiting its delivery receipt" } else { "" }
            ),
            OutcomeStatus::Delivered { .. } => {
                format!("{} to {} delivered (attempt {})", outcome.channel.as_str(), outcome.to, outcome.attempts)
            }
            OutcomeStatus::Retrying { error, .. } => {
                format!("{} to {} failed, retrying: {error}", outcome.channel.as_str(), outcome.to)
            }
            OutcomeStatus::Failed { reason } => {
                format!("{} to {} FAILED: {reason}", outcome.channel.as_str(), outcome.to)
            }
        };
        self.note(fault_id, &text, now);
        // A first failed attempt already counts as failed for the escalation: the next
        // channel or role must not wait for the outbox's retries.
        if judged_by_receipt {
            return;
        }
        let ok = matches!(outcome.status, OutcomeStatus::Delivered { .. });
        let first_failure = matches!(outcome.status, OutcomeStatus::Retrying { .. }) && outcome.attempts == 1;
        let final_failure = matches!(outcome.status, OutcomeStatus::Failed { .. }) && outcome.attempts <= 1;
        if let Ok(step) = step.parse::<u32>()
            && (ok || first_failure || final_failure)
        {
            if let Some(e) = self.lock().escalations.get_mut(&fault_id) {
                e.on_delivery(step, ok, now);
            }
            self.persist(fault_id).await;
            self.run_due(now).await;
        }
    }

    /// A tracked SMS settled: on the fault's timeline, and (delivered or not) to its
    /// escalation, exactly as a send's outcome would be. Once the escalation is saved the
    /// tracker is told, so the report does not go out again after a restart; one that does
    /// (a crash in between) changes nothing the second time.
    async fn on_delivery_report(&self, report: DeliveryReport) {
        self.apply_delivery_report(&report).await;
        if let Err(e) = self.receipts.mark_reported(&report.notification.id).await {
            tracing::warn!(notification = %report.notification.id, error = %e, "delivery receipts: the verdict will be reported again after a restart");
        }
    }

    async fn apply_delivery_report(&self, report: &DeliveryReport) {
        let now = Timestamp::now();
        let n = &report.notification;
        let Some((fault, step)) = n.id.split_once('/') else { return };
        let Ok(fault_id) = fault.parse::<u64>() else { return };
        let step = step.parse::<u32>().ok();
        let who = step
            .and_then(|s| self.lock().escalations.get(&fault_id).and_then(|e| e.person_of_step(s).map(str::to_string)))
            .map_or_else(|| n.to.clone(), |person| format!("{person} ({})", n.to));
        let text = match &report.state {
            DeliveryState::Delivered { at } => format!("SMS to {who} delivered {}", at.strftime("%H:%M:%S UTC")),
            DeliveryState::NotDelivered { reason, .. } => format!("SMS to {who} {reason}"),
            DeliveryState::NoReceipt { .. } => {
                format!("SMS to {who}: no delivery receipt; accepted by the gateway, it counts as delivered")
            }
            DeliveryState::Awaiting => return,
        };
        self.note(fault_id, &text, now);
        if let (Some(step), Some(ok)) = (step, report.state.escalation_verdict()) {
            if let Some(e) = self.lock().escalations.get_mut(&fault_id) {
                e.on_delivery(step, ok, now);
            }
            self.persist(fault_id).await;
            self.run_due(now).await;
        }
    }

    /// The receipt tracker (the HTTP port hands it the gateways' callbacks).
    pub fn receipts(&self) -> Arc<ReceiptTracker> {
        self.receipts.clone()
    }

    /// Every notification of a fault with its delivery, oldest first (`pikett fault show`).
    pub fn notifications_of(&self, fault: u64) -> Vec<NotificationStatus> {
        let prefix = format!("{fault}/");
        let entries = match self.outbox.with_id_prefix(&prefix) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(fault, error = %e, "cannot list the fault's notifications");
                return Vec::new();
            }
        };
        let tracked: BTreeMap<String, crate::notify::receipts::Tracked> =
            self.receipts.for_fault(&fault.to_string()).into_iter().map(|t| (t.notification.id.clone(), t)).collect();
        entries.iter().map(|e| notification_status(e, tracked.get(&e.notification.id))).collect()
    }

    /// Runs every escalation step that is due.
    async fn run_due(&self, now: Timestamp) {
        let mut work = Vec::new();
        {
            let mut st = self.lock();
            let overrides = st.overrides.clone();
            let plan = self.plan();
            let ctx = Context {
                people: &plan.people,
                rotations: &plan.rotations,
                overrides: &overrides,
                config: &plan.escalation,
            };
            for (id, e) in st.escalations.iter_mut() {
                if e.next_wakeup().is_some_and(|t| t <= now) {
                    let actions = e.due(now, &ctx);
                    if !actions.is_empty() {
                        work.push((*id, actions));
                    }
                }
            }
        }
        for (id, actions) in work {
            let fault = self.faults.with_engine(|e| e.fault(id).cloned());
            if let Some(fault) = fault {
                self.execute(&fault, actions, now).await;
            }
            self.persist(id).await;
        }
    }

    async fn execute(&self, fault: &Fault, actions: Vec<Action>, now: Timestamp) {
        for action in actions {
            let key = action.idempotency_key();
            match action {
                Action::Notify { person, channel, kind, to, role, step, .. } => {
                    let kind = match kind {
                        NotifyKind::Alarm => NotificationKind::Alarm,
                        NotifyKind::Resolved => NotificationKind::Resolved,
                        NotifyKind::Reminder => NotificationKind::Reminder,
                    };
                    let mut n =
                        self.notification(fault, key.unwrap_or_default(), kind, channel_kind(channel), to.clone(), now);
                    n.emergency = self
                        .lock()
                        .escalations
                        .get(&fault.id)
                        .is_some_and(|e| e.mode() == pikett_core::escalation::Mode::Emergency);
                    let role = role.map(|r| format!(" ({})", r.as_str())).unwrap_or_default();
                    let n_id = n.id.clone();
                    match self.outbox.enqueue(n).await {
                        Ok(Enqueued::New) => {
                            self.note(fault.id, &format!("{} {person}{role} by {channel} to {to}", kind.as_str()), now)
                        }
                        // Queued before a restart (the escalation was rebuilt by the catch-up):
                        // nothing is sent twice; a finished entry's verdict is taken over now,
                        // a pending one reports when the outbox has sent it.
                        Ok(Enqueued::Duplicate(state)) => {
                            self.note(
                                fault.id,
                                &format!("{} {person}{role} by {channel} to {to} was queued already", kind.as_str()),
                                now,
                            );
                            let verdict = match state {
                                // A tracked SMS is judged by its receipt (awaited: no verdict yet).
                                EntryState::Delivered => match self.receipts.tracked_state(&n_id) {
                                    Some(receipt) => receipt.escalation_verdict(),
                                    None => Some(true),
                                },
                                EntryState::Failed => Some(false),
                                EntryState::Pending => None,
                            };
                            if let Some(ok) = verdict
                                && let Some(e) = self.lock().escalations.get_mut(&fault.id)
                            {
                                e.on_delivery(step, ok, now);
                            }
                        }
                        Err(e) => self.note(fault.id, &format!("cannot queue {channel} to {person}: {e}"), now),
                    }
                }
                Action::RoleEscalated { role, person, reason, round, .. } => {
                    let who = person.unwrap_or_else(|| "nobody (vacant)".into());
                    let reason = serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    self.note(
                        fault.id,
                        &format!("paging {}: {who} (round {}, reason: {reason})", role.as_str(), round + 1),
                        now,
                    );
                }
                Action::ChainExhausted { all_failed, .. } => {
                    if all_failed {
                        self.metrics.notifications_failed_total.inc();
                        self.note(
                            fault.id,
                            "NOTIFICATION FAILED: every channel of every role failed; nobody was reached",
                            now,
                        );
                        tracing::error!(fault = fault.id, host = %fault.host, check = %fault.check, "every notification of the escalation failed");
                    } else {
                        self.note(fault.id, "escalation chain exhausted without an acknowledgement", now);
                    }
                }
            }
        }
    }

    /// Removes finished notifications older than the outbox's `keep_done`; how many went.
    pub fn purge_outbox(&self) -> Result<usize, crate::notify::outbox::OutboxError> {
        // Settled receipts go with their notifications; a failure here is only logged.
        if let Err(e) = self.receipts.purge() {
            tracing::warn!(error = %e, "retention: cannot purge settled delivery receipts");
        }
        self.outbox.purge()
    }

    /// Escalations in memory (those not finished).
    pub fn escalations_in_memory(&self) -> usize {
        self.lock().escalations.len()
    }

    /// Removes stored escalations of faults the engine no longer knows (retention removed
    /// them), at most `max`; returns how many went. Not flushed: the caller flushes.
    pub fn prune(&self, max: usize) -> Result<usize, StoreError> {
        crate::store::remove_where(self.tree.as_ref(), b"e/", max, |k, _| {
            let Some(id) = k.get(2..).and_then(|id| <[u8; 8]>::try_from(id).ok()) else { return false };
            let id = u64::from_be_bytes(id);
            !self.lock().escalations.contains_key(&id) && self.faults.with_engine(|e| e.fault(id).is_none())
        })
    }

    fn note(&self, fault: u64, text: &str, now: Timestamp) {
        let _ = self.faults.with_engine(|e| e.annotate(fault, None, text, now));
    }

    async fn persist(&self, fault: u64) {
        let json = {
            let mut st = self.lock();
            let json = st.escalations.get(&fault).map(|e| serde_json::to_vec(e).expect("escalations serialize"));
            // Memory holds the escalations something can still happen to; the rest is on disk.
            if st.escalations.get(&fault).is_some_and(Escalation::is_finished) {
                st.escalations.remove(&fault);
            }
            json
        };
        let r = match json {
            Some(j) => self.tree.insert(&esc_key(fault), j),
            None => Ok(()),
        };
        // After a restart the pager catches up from the fault state, so a failure here loses
        // no page; stopping keeps the outbox and the escalations from drifting apart.
        if let Err(e) = r {
            crate::services::storage_failure::stop("writing escalation state", &e);
        }
        if let Err(e) = self.storage.flush().await {
            crate::services::storage_failure::stop("flushing escalation state", &e);
        }
    }
}
