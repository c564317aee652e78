//! Who holds each on-call role at a given instant: people, rotations and overrides.
//!
//! Pure: every function takes the instant it is asked about; nothing here reads
//! the clock or does I/O. The config structs are the `[people.NAME]` and
//! `[[rotations]]` sections of the collector's config (their keys are public).
//!
//! Hand-offs use civil-time arithmetic: hand-off `k` is the local wall-clock
//! time `start + k × period` in the rotation's time zone, so a weekly Monday
//! 09:00 hand-off stays at 09:00 local across daylight-saving changes (the UTC
//! instant moves by an hour instead). A local time that falls into a DST gap is
//! moved forward by the gap (jiff's "compatible" rule); an ambiguous one takes
//! the earlier instant.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, civil};
use serde::{Deserialize, Serialize};

/// An on-call role; escalation pages them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
    Management,
}

impl Role {
    /// The escalation chain, in paging order.
    pub const CHAIN: [Role; 3] = [Role::Primary, Role::Secondary, Role::Management];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Management => "management",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::CHAIN
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (expected primary, secondary or management)"))
    }
}

/// A notification channel kind named in a person's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Voice,
    Email,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Sms, Channel::Voice, Channel::Email, Channel::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Voice => "voice",
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }

    /// The `[people.NAME]` key that holds this channel's address.
    pub fn address_key(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Voice => "phone",
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown channel {s:?} (expected sms, voice, email or webhook)"))
    }
}

/// An IANA time zone, validated against the tz database when the config is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tz {
    name: String,
    tz: TimeZone,
}

impl Tz {
    /// Looks the name up in the system tz database (`/usr/share/zoneinfo`).
    pub fn new(name: &str) -> Result<Tz, String> {
        TimeZone::get(name)
            .map(|tz| Tz { name: name.to_string(), tz })
            .map_err(|e| format!("unknown time zone {name:?} (use an IANA name such as \"Europe/Berlin\"): {e}"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }
}

impl TryFrom<String> for Tz {
    type Error = String;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        Tz::new(&name)
    }
}

impl From<Tz> for String {
    fn from(tz: Tz) -> String {
        tz.name
    }
}

impl Serialize for Tz {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Tz {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Tz::new(&name).map_err(serde::de::Error::custom)
    }
}

/// One entry of a person's `rules`: notify on `channel`, `after` the person was paged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationRule {
    pub channel: Channel,
    #[serde(default, with = "humantime_serde")]
    pub after: Duration,
}

/// `[people.NAME]`: a person's addresses and notification rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Number for the `sms` channel.
    #[serde(default)]
    pub sms: Option<String>,
    /// Number for the `voice` channel.
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// Recipient id sent with the `webhook` channel (default: the person's name).
    #[serde(default)]
    pub webhook: Option<String>,
    /// The person's own time zone (shown to staff; rotations use their own).
    #[serde(default)]
    pub timezone: Option<Tz>,
    /// Channels in the order they are tried; `after` counts from the page.
    #[serde(default)]
    pub rules: Vec<NotificationRule>,
}

impl Person {
    /// The address to use on `channel`, if the person has one.
    pub fn address(&self, name: &str, channel: Channel) -> Option<String> {
        match channel {
            Channel::Sms => self.sms.clone(),
            Channel::Voice => self.phone.clone(),
            Channel::Email => self.email.clone(),
            Channel::Webhook => Some(self.webhook.clone().unwrap_or_else(|| name.to_string())),
        }
    }
}

/// `[[rotations]]`: who holds `role`, in turn, one `period` each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    pub role: Role,
    pub members: Vec<String>,
    /// A hand-off moment in local (civil) time, e.g. `2026-11-02T09:00:00`.
    pub start: civil::DateTime,
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    pub timezone: Tz,
}

impl Rotation {
    fn period_secs(&self) -> Option<i64> {
        if self.period.subsec_nanos() != 0 || self.period.as_secs() == 0 {
            return None;
        }
        i64::try_from(self.period.as_secs()).ok()
    }

    /// The instant of hand-off number `k` (`k = 0` is `start`; negative is before it).
    pub fn handoff(&self, k: i64) -> Option<Timestamp> {
        let offset = SignedDuration::from_secs(k.checked_mul(self.period_secs()?)?);
        let local = self.start.checked_add(offset).ok()?;
        local.to_zoned(self.timezone.tz().clone()).ok().map(|z| z.timestamp())
    }

    /// The number of the last hand-off at or before `at` (negative before `start`).
    pub fn turn_at(&self, at: Timestamp) -> Option<i64> {
        let period = self.period_secs()?;
        let local = at.to_zoned(self.timezone.tz().clone()).datetime();
        let mut k = local.duration_since(self.start).as_secs().div_euclid(period);
        // The civil estimate is off by at most one turn near a DST change.
        while self.handoff(k)? > at {
            k -= 1;
        }
        while self.handoff(k + 1)? <= at {
            k += 1;
        }
        Some(k)
    }

    /// The member on duty at `at`. Before `start` the rotation is extended
    /// backwards (so `start` is just one hand-off moment, as docs/configuration.md says).
    pub fn member_at(&self, at: Timestamp) -> Option<&str> {
        if self.members.is_empty() {
            return None;
        }
        let k = self.turn_at(at)?;
        let n = i64::try_from(self.members.len()).ok()?;
        let i = usize::try_from(k.rem_euclid(n)).ok()?;
        Some(self.members[i].as_str())
    }

    /// The first hand-off strictly after `at`.
    pub fn next_handoff(&self, at: Timestamp) -> Option<Timestamp> {
        let k = self.turn_at(at)?;
        // Two hand-offs can share an instant when a DST gap swallows one.
        (k + 1..k + 4).filter_map(|k| self.handoff(k)).find(|t| *t > at)
    }
}

/// A temporary change of who holds a role (`pikett oncall override`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub role: Role,
    pub person: String,
    /// Active from `from` (inclusive) to `to` (exclusive).
    pub from: Timestamp,
    pub to: Timestamp,
    /// When it was made: among active overrides of a role the latest made wins.
    pub created_at: Timestamp,
    /// Who made it (the staff member's user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

impl Override {
    pub fn is_active(&self, at: Timestamp) -> bool {
        self.from <= at && at < self.to
    }
}

/// Who holds `role` at `at`: the latest-made active override, else the role's rotation.
///
/// Overrides with equal `created_at` are ordered by their position (later wins).
pub fn who_is_on_call<'a>(
    rotations: &'a [Rotation],
    overrides: &'a [Override],
    role: Role,
    at: Timestamp,
) -> Option<&'a str> {
    let overridden = overrides
        .iter()
        .enumerate()
        .filter(|(_, o)| o.role == role && o.is_active(at))
        .max_by_key(|(i, o)| (o.created_at, *i))
        .map(|(_, o)| o.person.as_str());
    overridden.or_else(|| rotations.iter().filter(|r| r.role == role).find_map(|r| r.member_at(at)))
}

/// Every role with its holder at `at` (`None`: nobody holds it).
pub fn roster<'a>(rotations: &'a [Rotation], overrides: &'a [Override], at: Timestamp) -> Vec<(Role, Option<&'a str>)> {
    Role::CHAIN.into_iter().map(|role| (role, who_is_on_call(rotations, overrides, role, at))).collect()
}

/// A problem in the on-call config that its parser cannot see (cross references).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnCallError {
    #[error(
        "rotations[{index}] (role {role}): member {person:?} is not defined; add a [people.{person}] table or fix the name"
    )]
    UnknownMember { index: usize, role: Role, person: String },
    #[error("rotations[{index}] (role {role}): `members` is empty; list at least one person")]
    NoMembers { index: usize, role: Role },
    #[error(
        "rotations[{index}] (role {role}): `period` must be a whole number of seconds and at least 1s, got {period:?}"
    )]
    BadPeriod { index: usize, role: Role, period: Duration },
    #[error(
        "rotations[{index}]: role {role} already has a rotation (rotations[{first}]); use one rotation per role and overrides for exceptions"
    )]
    DuplicateRole { index: usize, first: usize, role: Role },
    #[error("people.{person}.rules[{index}]: channel {channel} needs `{key}` set in [people.{person}]")]
    MissingAddress { person: String, index: usize, channel: Channel, key: &'static str },
    #[error(
        "people.{person}: no notification rules, so a page could not reach them; add e.g. rules = [{{ channel = \"sms\", after = \"0s\" }}]"
    )]
    NoRules { person: String },
    #[error("override: person {person:?} is not defined in [people]")]
    UnknownOverridePerson { person: String },
    #[error("override: `from` ({from}) must be before `to` ({to})")]
    EmptyOverride { from: Timestamp, to: Timestamp },
}

/// Checks the cross references of `[people.*]` and `[[rotations]]`; returns every problem found.
pub fn validate(people: &BTreeMap<String, Person>, rotations: &[Rotation]) -> Result<(), Vec<OnCallError>> {
    let mut errors = Vec::new();
    for (name, person) in people {
        for (index, rule) in person.rules.iter().enumerate() {
            if person.address(name, rule.channel).is_none() {
                errors.push(OnCallError::MissingAddress {
                    person: name.clone(),
                    index,
                    channel: rule.channel,
                    key: rule.channel.address_key(),
                });
            }
        }
    }
    let mut first_of_role: BTreeMap<Role, usize> = BTreeMap::new();
    let mut no_rules_reported = Vec::new();
    for (index, rotation) in rotations.iter().enumerate() {
        let role = rotation.role;
        if let Some(&first) = first_of_role.get(&role) {
            errors.push(OnCallError::DuplicateRole { index, first, role });
        } else {
            first_of_role.insert(role, index);
        }
        if rotation.members.is_empty() {
            errors.push(OnCallError::NoMembers { index, role });
        }
        if rotation.period_secs().is_none() {
            errors.push(OnCallError::BadPeriod { index, role, period: rotation.period });
        }
        for member in &rotation.members {
            match people.get(member) {
                None => errors.push(OnCallError::UnknownMember { index, role, person: member.clone() }),
                Some(p) if p.rules.is_empty() && !no_rules_reported.contains(member) => {
                    no_rules_reported.push(member.clone());
                    errors.push(OnCallError::NoRules { person: member.clone() });
                }
                Some(_) => {}
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Checks an override before it is stored.
pub fn validate_override(people: &BTreeMap<String, Person>, ov: &Override) -> Result<(), OnCallError> {
    let Some(person) = people.get(&ov.person) else {
        return Err(OnCallError::UnknownOverridePerson { person: ov.person.clone() });
    };
    if ov.from >= ov.to {
        return Err(OnCallError::EmptyOverride { from: ov.from, to: ov.to });
    }
    if person.rules.is_empty() {
        return Err(OnCallError::NoRules { person: ov.person.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn weekly(members: &[&str]) -> Rotation {
        Rotation {
            role: Role::Primary,
            members: members.iter().map(|s| s.to_string()).collect(),
            start: "2026-11-02T09:00:00".parse().unwrap(),
            period: Duration::from_secs(7 * 86400),
            timezone: Tz::new("Europe/Berlin").unwrap(),
        }
    }

    #[test]
    fn weekly_handoff_passes_to_next_member_at_local_nine() {
        let r = [weekly(&["alice", "bob"])];
        // 2026-11-02 is CET (UTC+1): 09:00 local = 08:00 UTC.
        assert_eq!(who_is_on_call(&r, &[], Role::Primary, ts("2026-11-02T08:00:00Z")), Some("alice"));
        assert_eq!(who_is_on_call(&r, &[], Role::Primary, ts("2026-11-09T07:59:59Z")), Some("alice"));
        assert_eq!(who_is_on_call(&r, &[], Role::Primary, ts("2026-11-09T08:00:00Z")), Some("bob"));
        assert_eq!(who_is_on_call(&r, &[], Role::Primary, ts("2026-11-16T08:00:00Z")), Some("alice"));
        assert_eq!(r[0].next_handoff(ts("2026-11-03T00:00:00Z")), Some(ts("2026-11-09T08:00:00Z")));
    }

    #[test]
    fn before_start_the_rotation_extends_backwards() {
        let r = [weekly(&["alice", "bob", "carol"])];
        assert_eq!(who_is_on_call(&r, &[], Role::Primary, ts("2026-11-02T07:59:59Z")), Some("carol"));
        assert_eq!(who_is_on_call(&r, &[], Role::Primary, ts("2026-10-20T12:00:00Z")), Some("bob"));
    }

    #[test]
    fn spring_forward_moves_the_utc_handoff_one_hour_earlier() {
        let r = weekly(&["alice", "bob"]);
        // Berlin switches to CEST on Sunday 2027-03-28. Monday 2027-03-22 09:00 CET = 08:00 UTC,
        // Monday 2027-03-29 09:00 CEST = 07:00 UTC.
        let before = r.next_handoff(ts("2027-03-21T00:00:00Z")).unwrap();
        let after = r.next_handoff(before).unwrap();
        assert_eq!(before, ts("2027-03-22T08:00:00Z"));
        assert_eq!(after, ts("2027-03-29T07:00:00Z"));
        assert_eq!(after.duration_since(before), SignedDuration::from_hours(167));
        let rot = [r];
        let holder_before = who_is_on_call(&rot, &[], Role::Primary, ts("2027-03-29T06:59:59Z"));
        let holder_after = who_is_on_call(&rot, &[], Role::Primary, ts("2027-03-29T07:00:00Z"));
        assert_ne!(holder_before, holder_after);
        // A fixed-168h scheme would hand off at 08:00 UTC = 10:00 local.
        assert_eq!(who_is_on_call(&rot, &[], Role::Primary, ts("2027-03-29T07:30:00Z")), holder_after);
    }

    #[test]
    fn fall_back_moves_the_utc_handoff_one_hour_later() {
        let r = weekly(&["alice", "bob"]);
        // Berlin returns to CET on Sunday 2027-10-31.
        let before = r.next_handoff(ts("2027-10-24T00:00:00Z")).unwrap();
        let after = r.next_handoff(before).unwrap();
        assert_eq!(before, ts("2027-10-25T07:00:00Z"));
        assert_eq!(after, ts("2027-11-01T08:00:00Z"));
        assert_eq!(after.duration_since(before), SignedDuration::from_hours(169));
        let rot = [r];
        let old = who_is_on_call(&rot, &[], Role::Primary, ts("2027-11-01T07:59:59Z"));
        let new = who_is_on_call(&rot, &[], Role::Primary, ts("2027-11-01T08:00:00Z"));
        assert_ne!(old, new);
        // Local wall-clock time of the hand-off is still 09:00.
        let local = after.to_zoned(TimeZone::get("Europe/Berlin").unwrap());
        assert_eq!((local.hour(), local.minute()), (9, 0));
    }

    #[test]
    fn twelve_hour_shifts_keep_their_local_times_across_dst() {
        let mut r = weekly(&["day", "night"]);
        r.period = Duration::from_secs(12 * 3600);
        r.start = "2027-03-27T09:00:00".parse().unwrap();
        let rot = [r];
        // Sunday 2027-03-28: 09:00 CEST = 07:00 UTC, 21:00 CEST = 19:00 UTC.
        assert_eq!(who_is_on_call(&rot, &[], Role::Primary, ts("2027-03-28T06:59:00Z")), Some("night"));
        assert_eq!(who_is_on_call(&rot, &[], Role::Primary, ts("2027-03-28T07:00:00Z")), Some("day"));
        assert_eq!(who_is_on_call(&rot, &[], Role::Primary, ts("2027-03-28T19:00:00Z")), Some("night"));
    }

    #[test]
    fn latest_made_active_override_wins() {
        let r = [weekly(&["alice", "bob"])];
        let o = |person: &str, from, to, made| Override {
            role: Role::Primary,
            person: person.into(),
            from: ts(from),
            to: ts(to),
            created_at: ts(made),
            created_by: None,
        };
        let overrides = [
            o("carol", "2026-11-03T00:00:00Z", "2026-11-05T00:00:00Z", "2026-11-01T10:00:00Z"),
            o("dave", "2026-11-04T00:00:00Z", "2026-11-04T12:00:00Z", "2026-11-01T11:00:00Z"),
        ];
        let at = |s| who_is_on_call(&r, &overrides, Role::Primary, ts(s));
        assert_eq!(at("2026-11-02T23:59:59Z"), Some("alice"));
        assert_eq!(at("2026-11-03T00:00:00Z"), Some("carol"));
        assert_eq!(at("2026-11-04T06:00:00Z"), Some("dave"));
        assert_eq!(at("2026-11-04T12:00:00Z"), Some("carol"));
        assert_eq!(at("2026-11-05T00:00:00Z"), Some("alice"));
        // Overrides of another role do not matter.
        assert_eq!(who_is_on_call(&r, &overrides, Role::Secondary, ts("2026-11-03T01:00:00Z")), None);
    }

    #[test]
    fn roster_lists_every_role_and_vacancies() {
        let mut second = weekly(&["bob"]);
        second.role = Role::Secondary;
        let r = [weekly(&["alice"]), second];
        assert_eq!(
            roster(&r, &[], ts("2026-12-01T00:00:00Z")),
            vec![(Role::Primary, Some("alice")), (Role::Secondary, Some("bob")), (Role::Management, None)]
        );
    }

    #[test]
    fn config_parses_spec_example() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Cfg {
            people: BTreeMap<String, Person>,
            rotations: Vec<Rotation>,
        }
        let cfg: Cfg = toml::from_str(
            r#"
            [people.alice]
            sms = "+4915100000001"
            phone = "+4915100000001"
            email = "alice@example.net"
            timezone = "Europe/Berlin"
            rules = [ { channel = "sms", after = "0s" }, { channel = "voice", after = "2m" } ]
            [people.bob]
            email = "bob@example.net"
            rules = [ { channel = "email" } ]

            [[rotations]]
            role = "primary"
            members = ["alice", "bob"]
            start = "2026-11-02T09:00:00"
            period = "1w"
            timezone = "Europe/Berlin"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.people["alice"].rules[1].after, Duration::from_secs(120));
        assert_eq!(cfg.people["bob"].rules[0].after, Duration::ZERO);
        assert_eq!(cfg.rotations[0].period, Duration::from_secs(7 * 86400));
        validate(&cfg.people, &cfg.rotations).unwrap();
    }

    #[test]
    fn bad_values_are_rejected_at_parse_time_with_their_name() {
        let bad_tz = toml::from_str::<Rotation>(
            r#"role = "primary"
            members = ["a"]
            start = "2026-11-02T09:00:00"
            period = "1w"
            timezone = "Europe/Berln""#,
        )
        .unwrap_err()
        .to_string();
        assert!(bad_tz.contains("Europe/Berln"), "{bad_tz}");
        let bad_channel =
            toml::from_str::<Person>(r#"rules = [{ channel = "fax", after = "0s" }]"#).unwrap_err().to_string();
        assert!(bad_channel.contains("fax"), "{bad_channel}");
        let bad_role = toml::from_str::<Rotation>(
            r#"role = "boss"
            members = ["a"]
            start = "2026-11-02T09:00:00"
            period = "1w"
            timezone = "UTC""#,
        )
        .unwrap_err()
        .to_string();
        assert!(bad_role.contains("boss"), "{bad_role}");
        let unknown_key = toml::from_str::<Person>(r#"pager = "123""#).unwrap_err().to_string();
        assert!(unknown_key.contains("pager"), "{unknown_key}");
    }

    #[test]
    fn validation_reports_every_cross_reference_problem() {
        let mut people = BTreeMap::new();
        people.insert(
            "alice".to_string(),
            Person {
                sms: Some("+49".into()),
                rules: vec![
                    NotificationRule { channel: Channel::Sms, after: Duration::ZERO },
                    NotificationRule { channel: Channel::Voice, after: Duration::from_secs(120) },
                ],
                ..Person::default()
            },
        );
        people.insert("mute".to_string(), Person::default());
        let mut zero = weekly(&["alice"]);
        zero.period = Duration::ZERO;
        let rotations = [weekly(&["alice", "carol", "mute"]), zero, {
            let mut r = weekly(&[]);
            r.role = Role::Management;
            r
        }];
        let errors = validate(&people, &rotations).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(errors.contains(&OnCallError::MissingAddress {
            person: "alice".into(),
            index: 1,
            channel: Channel::Voice,
            key: "phone"
        }));
        assert!(errors.contains(&OnCallError::UnknownMember { index: 0, role: Role::Primary, person: "carol".into() }));
        assert!(errors.contains(&OnCallError::NoRules { person: "mute".into() }));
        assert!(errors.contains(&OnCallError::DuplicateRole { index: 1, first: 0, role: Role::Primary }));
        assert!(errors.contains(&OnCallError::BadPeriod { index: 1, role: Role::Primary, period: Duration::ZERO }));
        assert!(errors.contains(&OnCallError::NoMembers { index: 2, role: Role::Management }));
        assert_eq!(errors.len(), 6, "{text:#?}");
        assert!(text.iter().any(|t| t.contains("[people.carol]")), "{text:#?}");
    }

    #[test]
    fn override_validation() {
        let mut people = BTreeMap::new();
        people.insert(
            "alice".to_string(),
            Person {
                email: Some("a@x".into()),
                rules: vec![NotificationRule { channel: Channel::Email, after: Duration::ZERO }],
                ..Person::default()
            },
        );
        let mut o = Override {
            role: Role::Primary,
            person: "alice".into(),
            from: ts("2026-11-03T00:00:00Z"),
            to: ts("2026-11-04T00:00:00Z"),
            created_at: ts("2026-11-01T00:00:00Z"),
            created_by: None,
        };
        validate_override(&people, &o).unwrap();
        o.to = o.from;
        assert!(matches!(validate_override(&people, &o), Err(OnCallError::EmptyOverride { .. })));
        o.person = "zed".into();
        assert!(matches!(validate_override(&people, &o), Err(OnCallError::UnknownOverridePerson { .. })));
    }
}
