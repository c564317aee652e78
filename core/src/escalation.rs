//! The escalation state machine of one fault: who is paged, on which channel, when.
//!
//! Pure: no I/O, no clock. The caller (the collector's escalation loop) drives
//! an [`Escalation`] with the current time:
//!
//! 1. [`Escalation::start`] when a fault opens (or an incident becomes an emergency);
//! 2. [`Escalation::due`] whenever [`Escalation::next_wakeup`] has passed: it
//!    returns the [`Action`]s to carry out now (put [`Action::Notify`] in the
//!    outbox, record every action on the fault's timeline);
//! 3. [`Escalation::on_delivery`] when the outbox knows a notification's outcome,
//!    then `due` again (a failure may make the next channel or role due at once);
//! 4. [`Escalation::ack`] stops paging; [`Escalation::resolve`] sends the
//!    resolution to everyone who was paged.
//!
//! The whole state is serde-serializable: store it after every call and
//! restore it after a restart; it continues exactly where it stopped.
//!
//! Rules, where the documented behaviour leaves room:
//! - A critical fault pages the roles in turn (`primary`, `secondary`,
//!   `management`). A role's person gets a notification per rule, `after` the
//!   moment that role was paged. The next role is paged `ack_timeout` after the
//!   previous one, or at once when every notification to the previous role's
//!   person failed (or nobody holds that role, or that person has no usable rule).
//! - Failover: when a notification fails, the person's next pending rule fires at
//!   once instead of waiting for its `after` (SMS failed → voice call now).
//! - Paging the next role does not cancel the previous person's pending rules:
//!   they were paged and stay paged until someone acknowledges.
//! - `repeat = N`: after `management`'s `ack_timeout` the whole chain runs again,
//!   N more times (1 + N rounds in all); repeat-round notifications are
//!   [`NotifyKind::Reminder`]s. Then [`Action::ChainExhausted`], whose
//!   `all_failed` is true only when no alarm was delivered and none is still
//!   pending (every attempt reported failed, or there was nobody to page).
//! - Emergency mode pages all three roles at once, each round; the next round
//!   after `ack_timeout` or when every notification of the round failed.
//! - Warnings never page: one notification (`warning_channel`, default email; the collector
//!   picks a configured channel when the file has no email channel and sets none)
//!   to the holder of `warning_role` (default primary), sent at the next moment
//!   inside `support_hours`; its resolution goes out inside support hours too.
//!   An unroutable or failed warning ends in `ChainExhausted { all_failed: true }`.
//! - Resolution goes to every person who received an alarm, on the non-voice
//!   channels of their rules (nobody wants a phone call saying "all fine"); a
//!   person whose rules are voice only gets it by SMS, else email, else voice.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp, civil};
use serde::{Deserialize, Serialize};

use crate::calendar::{TimeOfDay, Weekdays};
use crate::oncall::{Channel, Override, Person, Role, Rotation, Tz, who_is_on_call};

/// `[escalation]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    /// Per role: unacknowledged this long after a role was paged → the next role.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How often the whole chain is repeated after its first run (1 = it runs twice).
    #[serde(default = "default_repeat")]
    pub repeat: u32,
    /// When warnings may be delivered. Default: mon-fri 09:00-18:00 UTC.
    #[serde(default)]
    pub support_hours: SupportHours,
    /// The channel warnings are sent on.
    #[serde(default = "default_warning_channel")]
    pub warning_channel: Channel,
    /// The role whose holder (at delivery time) receives warnings.
    #[serde(default = "default_warning_role")]
    pub warning_role: Role,
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_repeat() -> u32 {
    1
}
fn default_warning_channel() -> Channel {
    Channel::Email
}
fn default_warning_role() -> Role {
    Role::Primary
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            ack_timeout: default_ack_timeout(),
            repeat: default_repeat(),
            support_hours: SupportHours::default(),
            warning_channel: default_warning_channel(),
            warning_role: default_warning_role(),
        }
    }
}

/// A problem in `[escalation]` that its parser cannot see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscalationConfigError {
    #[error("escalation.ack_timeout must be more than 0s, or every role would be paged at once")]
    ZeroAckTimeout,
    #[error(
        "escalation.warning_channel is {channel}, but people.{person} (a member of the {role} rotation) has no `{key}`"
    )]
    WarningUnroutable { channel: Channel, role: Role, person: String, key: &'static str },
}

impl EscalationConfig {
    /// Checks the config against the people and rotations; returns every problem found.
    pub fn validate(
        &self,
        people: &BTreeMap<String, Person>,
        rotations: &[Rotation],
    ) -> Result<(), Vec<EscalationConfigError>> {
        let mut errors = Vec::new();
        if self.ack_timeout.is_zero() {
            errors.push(EscalationConfigError::ZeroAckTimeout);
        }
        for rotation in rotations.iter().filter(|r| r.role == self.warning_role) {
            for member in &rotation.members {
                if let Some(p) = people.get(member)
                    && p.address(member, self.warning_channel).is_none()
                {
                    errors.push(EscalationConfigError::WarningUnroutable {
                        channel: self.warning_channel,
                        role: self.warning_role,
                        person: member.clone(),
                        key: self.warning_channel.address_key(),
                    });
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// `support_hours = { days = "mon-fri", from = "09:00", to = "18:00", timezone = "Europe/Berlin" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawSupportHours", into = "RawSupportHours")]
pub struct SupportHours {
    pub days: Weekdays,
    pub from: TimeOfDay,
    /// Exclusive; `24:00` is the end of the day.
    pub to: TimeOfDay,
    pub timezone: Tz,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupportHours {
    days: Weekdays,
    from: TimeOfDay,
    to: TimeOfDay,
    timezone: Tz,
}

impl TryFrom<RawSupportHours> for SupportHours {
    type Error = String;
    fn try_from(r: RawSupportHours) -> Result<Self, String> {
        if r.from >= r.to {
            return Err(format!(
                "support_hours: `from` ({}) must be before `to` ({}); hours across midnight are not supported",
                r.from, r.to
            ));
        }
        Ok(SupportHours { days: r.days, from: r.from, to: r.to, timezone: r.timezone })
    }
}

impl From<SupportHours> for RawSupportHours {
    fn from(s: SupportHours) -> Self {
        RawSupportHours { days: s.days, from: s.from, to: s.to, timezone: s.timezone }
    }
}

impl Default for SupportHours {
    fn default() -> Self {
        SupportHours {
            days: "mon-fri".parse().expect("valid literal"),
            from: TimeOfDay::from_seconds(9 * 3600),
            to: TimeOfDay::from_seconds(18 * 3600),
            timezone: Tz::new("UTC").expect("UTC always exists"),
        }
    }
}

impl SupportHours {
    /// `[start, end)` of the support window on local `date`, if `date` has one.
    fn window(&self, date: civil::Date) -> Option<(Timestamp, Timestamp)> {
        if !self.days.contains(date.weekday()) {
            return None;
        }
        let at = |secs: u32| {
            let midnight = date.to_datetime(civil::Time::midnight());
            let local = midnight.checked_add(SignedDuration::from_secs(i64::from(secs))).ok()?;
            local.to_zoned(self.timezone.tz().clone()).ok().map(|z| z.timestamp())
        };
        Some((at(self.from.seconds())?, at(self.to.seconds())?))
    }

    /// Whether `at` is inside support hours.
    pub fn is_open(&self, at: Timestamp) -> bool {
        self.next_open(at) == at
    }

    /// `at` itself when inside support hours, else the start of the next window.
    pub fn next_open(&self, at: Timestamp) -> Timestamp {
        let today = at.to_zoned(self.timezone.tz().clone()).date();
        let mut date = today;
        // Yesterday's window can still be open only with `to` past midnight,
        // which is rejected, so today is the first candidate. Eight days cover a week.
        for _ in 0..8 {
            if let Some((start, end)) = self.window(date)
                && at < end
            {
                return start.max(at);
            }
            match date.tomorrow() {
                Ok(d) => date = d,
                Err(_) => break,
            }
        }
        // Only reachable at the end of jiff's supported range.
        at
    }
}

/// What the escalation needs to know about the world when it pages someone.
/// Borrowed fresh on every call, so config changes apply to later steps.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub people: &'a BTreeMap<String, Person>,
    pub rotations: &'a [Rotation],
    pub overrides: &'a [Override],
    pub config: &'a EscalationConfig,
}

/// A fault's severity, as far as escalation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

/// How an escalation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// By severity: critical pages the chain, warning goes to the business-hours queue.
    Normal,
    /// An emergency: page the whole chain at once, whatever the severity.
    Emergency,
}

/// How an escalation currently runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Roles one after another.
    Chain,
    /// All roles at once.
    Emergency,
    /// One notification inside support hours, no paging.
    BusinessHours,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Status {
    Running,
    Acknowledged { at: Timestamp },
    Exhausted { at: Timestamp, all_failed: bool },
    Resolved { at: Timestamp },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    /// The first page of a person in this escalation round 1 (or a warning).
    Alarm,
    /// The fault is resolved.
    Resolved,
    /// A repeat round of the chain.
    Reminder,
}

/// Why a role was paged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    /// The first page of the fault.
    Start,
    /// The previous role did not acknowledge within `ack_timeout`.
    AckTimeout,
    /// Every notification to the previous role failed, or it had nobody to page.
    AllChannelsFailed,
    /// An emergency pages the whole chain.
    Emergency,
}

/// One step for the caller to carry out and record on the fault's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Send a notification. `step` is unique and increasing within the escalation;
    /// report its outcome with [`Escalation::on_delivery`].
    Notify {
        fault_id: String,
        person: String,
        channel: Channel,
        kind: NotifyKind,
        to: String,
        step: u32,
        /// The role the person was paged for (`None` for resolutions).
        role: Option<Role>,
        /// 0 for the first run of the chain, 1.. for repeats.
        round: u32,
    },
    /// A role is being paged (`person: None`: nobody holds it, the next role follows at once).
    RoleEscalated { fault_id: String, role: Role, person: Option<String>, round: u32, reason: EscalationReason },
    /// The chain ran out without an acknowledgement. `all_failed`: not a single
    /// alarm was delivered (each failed, or nobody could be paged) — the fault
    /// must say so and `pikett_notifications_failed_total` rise.
    ChainExhausted { fault_id: String, all_failed: bool },
}

impl Action {
    /// For `Notify`: the idempotency key, stable across retries and restarts.
    pub fn idempotency_key(&self) -> Option<String> {
        match self {
            Action::Notify { fault_id, step, .. } => Some(format!("{fault_id}/{step}")),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Scheduled,
    Sent,
    Delivered,
    Failed,
    Cancelled,
}

/// One role paged once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Page {
    wave: u32,
    round: u32,
    role: Role,
    person: Option<String>,
    at: Timestamp,
    /// Where the resolution goes, captured from the person's config at page time.
    resolution_to: Vec<(Channel, String)>,
}

/// One notification, scheduled or sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Delivery {
    page: Option<usize>,
    person: String,
    channel: Channel,
    to: String,
    kind: NotifyKind,
    role: Option<Role>,
    round: u32,
    due_at: Timestamp,
    step: Option<u32>,
    outcome: Outcome,
}

/// The next paging step of a running escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Next {
    at: Timestamp,
    round: u32,
    /// Index into [`Role::CHAIN`] (chain mode only).
    role: usize,
    reason: EscalationReason,
}

/// Counts of alarm notifications by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeliverySummary {
    pub delivered: usize,
    pub failed: usize,
    /// Sent, outcome not reported yet.
    pub pending: usize,
}

/// The escalation of one fault (or emergency incident). See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    fault_id: String,
    severity: Severity,
    mode: Mode,
    started_at: Timestamp,
    status: Status,
    next: Option<Next>,
    wave: u32,
    pages: Vec<Page>,
    deliveries: Vec<Delivery>,
    last_step: u32,
}

impl Escalation {
    /// A new escalation; call [`Escalation::due`] right away for the first page.
    pub fn start(fault_id: &str, severity: Severity, now: Timestamp, mode: StartMode) -> Escalation {
        let (mode, reason) = match (mode, severity) {
            (StartMode::Emergency, _) => (Mode::Emergency, EscalationReason::Emergency),
            (StartMode::Normal, Severity::Critical) => (Mode::Chain, EscalationReason::Start),
            (StartMode::Normal, Severity::Warning) => (Mode::BusinessHours, EscalationReason::Start),
        };
        Escalation {
            fault_id: fault_id.to_string(),
            severity,
            mode,
            started_at: now,
            status: Status::Running,
            // Business hours: `due` moves this to the next support-hours moment.
            next: Some(Next { at: now, round: 0, role: 0, reason }),
            wave: 0,
            pages: Vec::new(),
            deliveries: Vec::new(),
            last_step: 0,
        }
    }

    pub fn fault_id(&self) -> &str {
        &self.fault_id
    }
    pub fn severity(&self) -> Severity {
        self.severity
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn status(&self) -> Status {
        self.status
    }
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }

    /// Everyone who received at least one alarm, in the order they were first paged.
    pub fn paged_people(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for d in self.deliveries.iter().filter(|d| d.kind != NotifyKind::Resolved && d.step.is_some()) {
            if !out.contains(&d.person.as_str()) {
                out.push(&d.person);
            }
        }
        out
    }

    /// Who notification `step` went to (for the fault's timeline).
    pub fn person_of_step(&self, step: u32) -> Option<&str> {
        self.deliveries.iter().find(|d| d.step == Some(step)).map(|d| d.person.as_str())
    }

    /// Outcomes of the alarms sent so far.
    pub fn delivery_summary(&self) -> DeliverySummary {
        let mut s = DeliverySummary::default();
        for d in self.deliveries.iter().filter(|d| d.kind != NotifyKind::Resolved) {
            match d.outcome {
                Outcome::Delivered => s.delivered += 1,
                Outcome::Failed => s.failed += 1,
                Outcome::Sent => s.pending += 1,
                Outcome::Scheduled | Outcome::Cancelled => {}
            }
        }
        s
    }

    /// Resolved with nothing left to send (resolutions of warnings wait for support hours):
    /// nothing can happen to it any more, so a caller need not keep it at hand. A fault that
    /// opens again starts a new escalation.
    pub fn is_finished(&self) -> bool {
        matches!(self.status, Status::Resolved { .. }) && self.next_wakeup().is_none()
    }

    /// When `due` next has something to do; `None`: nothing until the caller acts.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        let next = self.next.filter(|_| self.status == Status::Running).map(|n| n.at);
        self.deliveries.iter().filter(|d| d.outcome == Outcome::Scheduled).map(|d| d.due_at).chain(next).min()
    }

    /// Everything due at `now`, in order. Catching up after a pause pages
    /// from `now`: a role paged late still gets its full `ack_timeout`.
    pub fn due(&mut self, now: Timestamp, ctx: &Context<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        loop {
            let before = out.len();
            self.emit_scheduled(now, &mut out);
            let mut fired = false;
            if self.status == Status::Running
                && let Some(next) = self.next.filter(|n| n.at <= now)
            {
                self.fire(next, now, ctx, &mut out);
                fired = true;
            }
            // Each firing moves `next` on (or ends it), so this terminates.
            if out.len() == before && !fired {
                return out;
            }
        }
    }

    /// The outbox's verdict on notification `step`. `ok = false` means the
    /// channel gave up on it. A later `ok = true` (a retry worked) overrides a
    /// failure. Call `due` afterwards: a failure may make something due now.
    pub fn on_delivery(&mut self, step: u32, ok: bool, now: Timestamp) {
        let Some(index) = self.deliveries.iter().position(|d| d.step == Some(step)) else {
            tracing::debug!(fault = %self.fault_id, step, "delivery outcome for an unknown step ignored");
            return;
        };
        let delivery = &mut self.deliveries[index];
        match (delivery.outcome, ok) {
            (Outcome::Sent | Outcome::Failed, true) => delivery.outcome = Outcome::Delivered,
            (Outcome::Sent, false) => delivery.outcome = Outcome::Failed,
            _ => return,
        }
        if ok || self.status != Status::Running || delivery.kind == NotifyKind::Resolved {
            return;
        }
        let page = delivery.page;
        if self.mode == Mode::BusinessHours {
            // The warning was the only notification: its failure ends the escalation.
            self.next = Some(Next { at: now, round: 1, role: 0, reason: EscalationReason::AllChannelsFailed });
            return;
        }
        // Failover: the person's next pending rule fires now.
        if let Some(next) = self
            .deliveries
            .iter_mut()
            .filter(|d| d.page == page && d.outcome == Outcome::Scheduled)
            .min_by_key(|d| d.due_at)
        {
            next.due_at = next.due_at.min(now);
        }
        if let Some(page) = page
            && self.pages.get(page).is_some_and(|p| p.wave == self.wave)
            && self.wave_all_failed()
            && let Some(next) = self.next.as_mut()
            && next.at > now
        {
            next.at = now;
            next.reason = EscalationReason::AllChannelsFailed;
        }
    }

    /// Same as [`Escalation::on_delivery`] for the caller that knows person and
    /// channel only: applies to the latest notification sent to them on it.
    pub fn on_delivery_to(&mut self, person: &str, channel: Channel, ok: bool, now: Timestamp) {
        let step = self
            .deliveries
            .iter()
            .filter(|d| d.person == person && d.channel == channel && d.kind != NotifyKind::Resolved)
            .filter_map(|d| d.step)
            .max();
        if let Some(step) = step {
            self.on_delivery(step, ok, now);
        }
    }

    /// Someone acknowledged: stop paging (pending rules are cancelled).
    pub fn ack(&mut self, now: Timestamp) {
        if matches!(self.status, Status::Running | Status::Exhausted { .. }) {
            self.status = Status::Acknowledged { at: now };
            self.next = None;
            self.cancel_scheduled();
        }
    }

    /// The fault cleared: stop paging and tell everyone who received an alarm.
    /// Warnings' resolutions are sent inside support hours.
    pub fn resolve(&mut self, now: Timestamp, ctx: &Context<'_>) -> Vec<Action> {
        if matches!(self.status, Status::Resolved { .. }) {
            return Vec::new();
        }
        self.status = Status::Resolved { at: now };
        self.next = None;
        self.cancel_scheduled();
        let due_at = match self.mode {
            Mode::BusinessHours => ctx.config.support_hours.next_open(now),
            Mode::Chain | Mode::Emergency => now,
        };
        let mut seen: Vec<(String, Channel)> = Vec::new();
        let mut resolutions = Vec::new();
        for d in self.deliveries.iter().filter(|d| d.kind != NotifyKind::Resolved && d.step.is_some()) {
            let targets: Vec<(Channel, String)> = match d.page {
                Some(p) => self.pages.get(p).map(|p| p.resolution_to.clone()).unwrap_or_default(),
                None => vec![(d.channel, d.to.clone())],
            };
            for (channel, to) in targets {
                let key = (d.person.clone(), channel);
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                resolutions.push(Delivery {
                    page: None,
                    person: d.person.clone(),
                    channel,
                    to,
                    kind: NotifyKind::Resolved,
                    role: None,
                    round: 0,
                    due_at,
                    step: None,
                    outcome: Outcome::Scheduled,
                });
            }
        }
        self.deliveries.extend(resolutions);
        let mut out = Vec::new();
        self.emit_scheduled(now, &mut out);
        out
    }

    /// An incident became an emergency: page the whole chain at
    /// once from `now` (also after an ack; not after resolution).
    pub fn escalate_emergency(&mut self, now: Timestamp) {
        if matches!(self.status, Status::Resolved { .. }) {
            return;
        }
        self.cancel_scheduled();
        self.mode = Mode::Emergency;
        self.status = Status::Running;
        self.next = Some(Next { at: now, round: 0, role: 0, reason: EscalationReason::Emergency });
    }

    /// The fault's severity changed. A warning that became critical starts
    /// paging from `now` unless it was acknowledged or resolved; a downgrade
    /// does not un-page anyone.
    pub fn set_severity(&mut self, severity: Severity, now: Timestamp) {
        self.severity = severity;
        if severity == Severity::Critical && self.mode == Mode::BusinessHours && self.status == Status::Running {
            self.cancel_scheduled();
            self.mode = Mode::Chain;
            self.next = Some(Next { at: now, round: 0, role: 0, reason: EscalationReason::Start });
        }
    }

    fn cancel_scheduled(&mut self) {
        for d in self.deliveries.iter_mut().filter(|d| d.outcome == Outcome::Scheduled) {
            d.outcome = Outcome::Cancelled;
        }
    }

    fn emit_scheduled(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let mut ready: Vec<usize> = (0..self.deliveries.len())
            .filter(|&i| self.deliveries[i].outcome == Outcome::Scheduled && self.deliveries[i].due_at <= now)
            .collect();
        ready.sort_by_key(|&i| (self.deliveries[i].due_at, i));
        for i in ready {
            self.last_step += 1;
            let d = &mut self.deliveries[i];
            d.step = Some(self.last_step);
            d.outcome = Outcome::Sent;
            out.push(Action::Notify {
                fault_id: self.fault_id.clone(),
                person: d.person.clone(),
                channel: d.channel,
                kind: d.kind,
                to: d.to.clone(),
                step: self.last_step,
                role: d.role,
                round: d.round,
            });
        }
    }

    /// Every alarm of the current wave failed (true for a wave with none).
    fn wave_all_failed(&self) -> bool {
        self.deliveries
            .iter()
            .filter(|d| d.page.and_then(|p| self.pages.get(p)).is_some_and(|p| p.wave == self.wave))
            .all(|d| d.outcome == Outcome::Failed)
    }

    fn fire(&mut self, next: Next, now: Timestamp, ctx: &Context<'_>, out: &mut Vec<Action>) {
        let repeat = ctx.config.repeat;
        let exhausted = match self.mode {
            Mode::BusinessHours => next.round > 0,
            Mode::Chain | Mode::Emergency => next.round > repeat,
        };
        if exhausted {
            let s = self.delivery_summary();
            let all_failed = s.delivered == 0 && s.pending == 0;
            self.status = Status::Exhausted { at: now, all_failed };
            self.next = None;
            out.push(Action::ChainExhausted { fault_id: self.fault_id.clone(), all_failed });
            return;
        }
        let ack = SignedDuration::try_from(ctx.config.ack_timeout).unwrap_or(SignedDuration::MAX);
        let later = now.checked_add(ack).unwrap_or(Timestamp::MAX);
        match self.mode {
            Mode::BusinessHours => self.fire_warning(next, now, ctx, out),
            Mode::Chain => {
                self.wave += 1;
                let role = Role::CHAIN[next.role.min(Role::CHAIN.len() - 1)];
                self.page(role, next.round, next.reason, now, ctx, out);
                let (round, role) =
                    if next.role + 1 < Role::CHAIN.len() { (next.round, next.role + 1) } else { (next.round + 1, 0) };
                self.schedule_next(round, role, later, now);
            }
            Mode::Emergency => {
                self.wave += 1;
                for role in Role::CHAIN {
                    self.page(role, next.round, next.reason, now, ctx, out);
                }
                self.schedule_next(next.round + 1, 0, later, now);
            }
        }
    }

    fn schedule_next(&mut self, round: u32, role: usize, at: Timestamp, now: Timestamp) {
        let (at, reason) = if self.wave_all_failed() {
            (now, EscalationReason::AllChannelsFailed)
        } else {
            (at, EscalationReason::AckTimeout)
        };
        self.next = Some(Next { at, round, role, reason });
    }

    fn page(
        &mut self,
        role: Role,
        round: u32,
        reason: EscalationReason,
        now: Timestamp,
        ctx: &Context<'_>,
        out: &mut Vec<Action>,
    ) {
        let holder = who_is_on_call(ctx.rotations, ctx.overrides, role, now);
        let person = holder.and_then(|name| ctx.people.get(name).map(|p| (name, p)));
        if holder.is_some() && person.is_none() {
            tracing::warn!(fault = %self.fault_id, %role, person = holder, "on-call person has no [people] entry");
        }
        out.push(Action::RoleEscalated {
            fault_id: self.fault_id.clone(),
            role,
            person: holder.map(str::to_string),
            round,
            reason,
        });
        // A repeat round supersedes the role's earlier page: its pending rules would duplicate.
        for d in self.deliveries.iter_mut() {
            if d.outcome == Outcome::Scheduled && d.role == Some(role) {
                d.outcome = Outcome::Cancelled;
            }
        }
        let page = self.pages.len();
        let kind = if round == 0 { NotifyKind::Alarm } else { NotifyKind::Reminder };
        let mut resolution_to = Vec::new();
        if let Some((name, p)) = person {
            for rule in &p.rules {
                let Some(to) = p.address(name, rule.channel) else {
                    tracing::warn!(fault = %self.fault_id, person = name, channel = %rule.channel, "rule without address skipped");
                    continue;
                };
                let after = SignedDuration::try_from(rule.after).unwrap_or(SignedDuration::MAX);
                self.deliveries.push(Delivery {
                    page: Some(page),
                    person: name.to_string(),
                    channel: rule.channel,
                    to,
                    kind,
                    role: Some(role),
                    round,
                    due_at: now.checked_add(after).unwrap_or(Timestamp::MAX),
                    step: None,
                    outcome: Outcome::Scheduled,
                });
            }
            resolution_to = resolution_targets(name, p);
        }
        self.pages.push(Page {
            wave: self.wave,
            round,
            role,
            person: person.map(|(name, _)| name.to_string()),
            at: now,
            resolution_to,
        });
    }

    fn fire_warning(&mut self, next: Next, now: Timestamp, ctx: &Context<'_>, out: &mut Vec<Action>) {
        let open = ctx.config.support_hours.next_open(now);
        if open > now {
            // Not inside support hours: wait for them.
            self.next = Some(Next { at: open, ..next });
            return;
        }
        let role = ctx.config.warning_role;
        let channel = ctx.config.warning_channel;
        let holder = who_is_on_call(ctx.rotations, ctx.overrides, role, now);
        let target = holder.and_then(|name| {
            let p = ctx.people.get(name)?;
            Some((name, p.address(name, channel)?))
        });
        match target {
            Some((name, to)) => {
                self.deliveries.push(Delivery {
                    page: None,
                    person: name.to_string(),
                    channel,
                    to,
                    kind: NotifyKind::Alarm,
                    role: Some(role),
                    round: 0,
                    due_at: now,
                    step: None,
                    outcome: Outcome::Scheduled,
                });
                self.next = None;
                self.emit_scheduled(now, out);
            }
            None => {
                tracing::warn!(fault = %self.fault_id, %role, %channel, person = holder, "warning has no recipient");
                self.next = Some(Next { at: now, round: 1, ..next });
            }
        }
    }
}

/// Resolution channels for a person: the non-voice channels of their rules;
/// voice-only people get SMS, else email, else (last resort) a call.
fn resolution_targets(name: &str, person: &Person) -> Vec<(Channel, String)> {
    let mut out: Vec<(Channel, String)> = Vec::new();
    for rule in person.rules.iter().filter(|r| r.channel != Channel::Voice) {
        if let Some(to) = person.address(name, rule.channel)
            && !out.iter().any(|(c, _)| *c == rule.channel)
        {
            out.push((rule.channel, to));
        }
    }
    if out.is_empty()
        && let Some((channel, to)) =
            [Channel::Sms, Channel::Email, Channel::Voice].into_iter().find_map(|c| Some((c, person.address(name, c)?)))
    {
        out.push((channel, to));
    }
    out
}

#[cfg(test)]
mod tests;
