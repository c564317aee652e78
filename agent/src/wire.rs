//! Conversion of observations to their wire form (`pikett.v1.Batch`).

use pikett_proto::v1 as pb;

use crate::observation::{Observation, State};

fn ms(t: jiff::Timestamp) -> i64 {
    t.as_millisecond()
}

pub fn status(s: State) -> pb::CheckStatus {
    match s {
        State::Ok => pb::CheckStatus::Ok,
        State::Warning => pb::CheckStatus::Warning,
        State::Critical => pb::CheckStatus::Critical,
        State::Unknown => pb::CheckStatus::Unknown,
    }
}

/// Builds one batch (without its sequence number: the spool assigns it).
pub fn to_batch(observations: Vec<Observation>) -> pb::Batch {
    let mut batch = pb::Batch { created_unix_ms: jiff::Timestamp::now().as_millisecond(), ..Default::default() };
    for o in observations {
        match o {
            Observation::Check(c) => {
                batch.checks.push(pb::CheckResult::new(c.name, status(c.state), c.summary, ms(c.time)))
            }
            Observation::Sample(s) => batch.samples.push(pb::Sample {
                name: s.name,
                labels: s.labels.into_iter().collect(),
                value: s.value,
                unit: s.unit,
                time_unix_ms: ms(s.time),
            }),
            Observation::Event(e) => batch.events.push(pb::Event {
                source: e.source,
                severity: e.severity,
                message_id: e.message_id,
                message: e.message,
                time_unix_ms: ms(e.time),
            }),
            Observation::Inventory(i) => batch.inventory.push(pb::Inventory {
                name: i.name,
                data_json: i.data.to_string(),
                time_unix_ms: ms(i.time),
            }),
        }
    }
    batch
}
