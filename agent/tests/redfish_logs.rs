//! SEL and Lifecycle log entries become events once: no history replay on install, cursor kept across restarts, resync after a clear, pages followed.
//!
//! The agent writes a probe's cursor changes in the same spool write as the events they
//! cover (`Probe::take_state`); `poll_and_spool` does what the agent's batcher does.

#[path = "redfish_support/mod.rs"]
mod common;

use common::*;
use pikett_agent::observation::Observation;
use pikett_agent::probes::redfish::RedfishProbe;
use pikett_agent::probes::{Probe, SharedState};
use serde_json::{Value, json};

const SEL: &str = "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel/Entries";
const LC: &str = "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Lclog/Entries";

fn entry(base: &str, id: u64, created: &str, severity: &str, message_id: &str, message: &str) -> Value {
    json!({
        "@odata.id": format!("{base}/{id}"), "Id": id.to_string(), "Created": created,
        "EntryType": "SEL", "Severity": severity, "MessageId": message_id, "Message": message
    })
}

/// One poll whose observations (and the cursor changes that go with them) are spooled.
async fn poll_and_spool(p: &mut RedfishProbe, state: &SharedState) -> Vec<Observation> {
    let obs = p.poll().await;
    for (key, value) in p.take_state() {
        state.save(&key, &value).unwrap();
    }
    obs
}

/// Puts `new` entries (newest first) on top of the collection.
fn prepend(bmc: &TestBmc, path: &str, new: Vec<Value>) {
    bmc.edit(path, |v| {
        let mut members = new;
        members.extend(v["Members"].as_array().unwrap().iter().cloned());
        v["Members@odata.count"] = json!(members.len());
        v["Members"] = Value::Array(members);
    });
}

#[tokio::test]
async fn first_poll_does_not_replay_history_and_new_entries_come_once() {
    let bmc = TestBmc::start(R750).await;
    let state = memory_state();
    let mut p = RedfishProbe::new(bmc.config(), state.clone()).unwrap();
    assert!(events(&poll_and_spool(&mut p, &state).await).is_empty(), "history replayed on first poll");

    let newest_sel: u64 = fixture_json(R750, SEL)["Members"][0]["Id"].as_str().unwrap().parse().unwrap();
    prepend(
        &bmc,
        SEL,
        vec![entry(SEL, newest_sel + 1, "2026-11-23T09:00:00-06:00", "Critical", "PSU0003", "Power supply 2 lost AC.")],
    );
    let ev = events(&poll_and_spool(&mut p, &state).await);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].source, "redfish/sel");
    assert_eq!(ev[0].severity, "Critical");
    assert_eq!(ev[0].message_id, "PSU0003");
    assert_eq!(ev[0].message, "Power supply 2 lost AC.");
    assert_eq!(ev[0].time.to_string(), "2026-11-23T15:00:00Z");
    assert!(events(&poll_and_spool(&mut p, &state).await).is_empty(), "same entry reported twice");
    p.shutdown().await;

    // "Restart": a new probe with the same state store neither replays nor misses.
    let newest_lc: u64 = fixture_json(R750, LC)["Members"][0]["Id"].as_str().unwrap().parse().unwrap();
    prepend(
        &bmc,
        LC,
        vec![
            entry(LC, newest_lc + 2, "2026-11-23T10:00:05-06:00", "Warning", "IDRAC.2.9.SYS1003", "second"),
            entry(LC, newest_lc + 1, "2026-11-23T10:00:00-06:00", "OK", "IDRAC.2.9.USR0030", "first"),
        ],
    );
    let mut p = RedfishProbe::new(bmc.config(), state.clone()).unwrap();
    let ev = events(&p.poll().await);
    let got: Vec<(&str, &str)> = ev.iter().map(|e| (e.source.as_str(), e.message.as_str())).collect();
    assert_eq!(got, [("redfish/lclog", "first"), ("redfish/lclog", "second")], "oldest first, nothing replayed");
    p.shutdown().await;
}

#[tokio::test]
async fn cleared_log_resynchronises() {
    let bmc = TestBmc::start(R750).await;
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    p.poll().await;
    // Cleared: ids start again at 1; only entries after the old cursor's time are new.
    bmc.edit(SEL, |v| {
        v["Members"] = json!([
            entry(SEL, 2, "2026-11-23T11:00:00Z", "Critical", "CPU0000", "after clear"),
            entry(SEL, 1, "2026-11-23T10:59:00Z", "OK", "SEL0001", "Log cleared."),
        ]);
        v["Members@odata.count"] = json!(2);
    });
    let ev: Vec<_> = events(&p.poll().await).into_iter().filter(|e| e.source == "redfish/sel").collect();
    let msgs: Vec<&str> = ev.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(msgs, ["Log cleared.", "after clear"]);
    // And the cursor follows the new ids.
    prepend(&bmc, SEL, vec![entry(SEL, 3, "2026-11-23T11:05:00Z", "OK", "X", "third")]);
    let ev: Vec<_> = events(&p.poll().await).into_iter().filter(|e| e.source == "redfish/sel").collect();
    assert_eq!(ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["third"]);
    p.shutdown().await;
}

#[tokio::test]
async fn next_link_pages_are_followed_until_the_cursor() {
    let bmc = TestBmc::start(R750).await;
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    p.poll().await;
    let fixture = fixture_json(R750, LC);
    let old = fixture["Members"].as_array().unwrap().clone();
    let newest: u64 = old[0]["Id"].as_str().unwrap().parse().unwrap();
    let page2 = format!("{LC}?$skip=2");
    bmc.edit(LC, |v| {
        v["Members"] = json!([
            entry(LC, newest + 4, "2026-11-23T12:00:04Z", "OK", "M4", "e4"),
            entry(LC, newest + 3, "2026-11-23T12:00:03Z", "OK", "M3", "e3"),
        ]);
        v["Members@odata.nextLink"] = json!(page2);
        v["Members@odata.count"] = json!(4 + old.len());
    });
    let mut second = vec![
        entry(LC, newest + 2, "2026-11-23T12:00:02Z", "OK", "M2", "e2"),
        entry(LC, newest + 1, "2026-11-23T12:00:01Z", "OK", "M1", "e1"),
    ];
    second.extend(old);
    bmc.set_override(&page2, Override::Json(json!({"Members": second})));
    let ev: Vec<_> = events(&p.poll().await).into_iter().filter(|e| e.source == "redfish/lclog").collect();
    assert_eq!(ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["e1", "e2", "e3", "e4"]);
    assert!(bmc.seen().iter().any(|s| s.target.contains("$skip=2")));
    p.shutdown().await;
}

#[tokio::test]
async fn a_cursor_not_spooled_with_its_events_does_not_skip_them_after_a_restart() {
    let bmc = TestBmc::start(R750).await;
    let state = memory_state();
    let mut p = RedfishProbe::new(bmc.config(), state.clone()).unwrap();
    poll_and_spool(&mut p, &state).await;
    let newest: u64 = fixture_json(R750, SEL)["Members"][0]["Id"].as_str().unwrap().parse().unwrap();
    prepend(&bmc, SEL, vec![entry(SEL, newest + 1, "2026-11-23T09:00:00Z", "Critical", "PSU0003", "lost AC")]);
    // Polled, but the agent dies before the batch with the event is spooled.
    let ev = events(&p.poll().await);
    assert_eq!(ev.len(), 1);
    assert!(!p.take_state().is_empty(), "the moved cursor was not handed over for spooling");
    // Within one process the cursor has moved: no second report.
    assert!(events(&p.poll().await).is_empty(), "the same entry was reported twice in one process");
    p.shutdown().await;
    // After the restart the event comes again (nothing was spooled), not never.
    let mut p = RedfishProbe::new(bmc.config(), state.clone()).unwrap();
    let ev: Vec<_> = events(&p.poll().await).into_iter().filter(|e| e.source == "redfish/sel").collect();
    assert_eq!(ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["lost AC"], "the event was lost");
    p.shutdown().await;
}

#[tokio::test]
async fn entries_beyond_max_log_pages_are_counted_not_dropped_silently() {
    let bmc = TestBmc::start(R750).await;
    let mut cfg = bmc.config();
    cfg.max_log_pages = 1;
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    p.poll().await;
    let newest: u64 = fixture_json(R750, LC)["Members"][0]["Id"].as_str().unwrap().parse().unwrap();
    bmc.edit(LC, |v| {
        v["Members"] = json!([
            entry(LC, newest + 5, "2026-11-23T12:00:05Z", "OK", "M5", "e5"),
            entry(LC, newest + 4, "2026-11-23T12:00:04Z", "OK", "M4", "e4"),
        ]);
        v["Members@odata.nextLink"] = json!(format!("{LC}?$skip=2"));
    });
    let ev: Vec<_> = events(&p.poll().await).into_iter().filter(|e| e.source == "redfish/lclog").collect();
    let skipped = ev.iter().find(|e| e.message_id == "pikett.LogEntriesSkipped").expect("no report of skipped entries");
    assert_eq!(skipped.severity, "Warning");
    assert!(skipped.message.starts_with("3 older new entries"), "{}", skipped.message);
    let read: Vec<&str> =
        ev.iter().filter(|e| e.message_id != "pikett.LogEntriesSkipped").map(|e| e.message.as_str()).collect();
    assert_eq!(read, ["e4", "e5"]);
    p.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_page_leaves_the_cursor_so_nothing_between_is_skipped() {
    let bmc = TestBmc::start(R750).await;
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    p.poll().await;
    let newest: u64 = fixture_json(R750, LC)["Members"][0]["Id"].as_str().unwrap().parse().unwrap();
    let page2 = format!("{LC}?$skip=2");
    bmc.edit(LC, |v| {
        v["Members"] = json!([
            entry(LC, newest + 4, "2026-11-23T12:00:04Z", "OK", "M4", "e4"),
            entry(LC, newest + 3, "2026-11-23T12:00:03Z", "OK", "M3", "e3"),
        ]);
        v["Members@odata.nextLink"] = json!(page2);
    });
    bmc.set_override(&page2, Override::Status(500, "busy".into()));
    let lclog = |obs: &[Observation]| -> Vec<String> {
        events(obs).into_iter().filter(|e| e.source == "redfish/lclog").map(|e| e.message).collect()
    };
    assert!(lclog(&p.poll().await).is_empty(), "a log with an unreadable page was reported in part");
    let fixture = fixture_json(R750, LC);
    let mut second = vec![
        entry(LC, newest + 2, "2026-11-23T12:00:02Z", "OK", "M2", "e2"),
        entry(LC, newest + 1, "2026-11-23T12:00:01Z", "OK", "M1", "e1"),
    ];
    second.extend(fixture["Members"].as_array().unwrap().iter().cloned());
    bmc.set_override(&page2, Override::Json(json!({"Members": second})));
    assert_eq!(lclog(&p.poll().await), ["e1", "e2", "e3", "e4"], "the hole was skipped");
    p.shutdown().await;
}

/// Each vendor's hardware event log, as its capture lists it: (set, entries, source, oldest first).
const VENDOR_LOGS: [(&str, &str, &str, bool); 4] = [
    (R750, SEL, "redfish/sel", false),
    (R750, LC, "redfish/lclog", false),
    ("lenovo-sr670v2-xcc-2.83", "/redfish/v1/Systems/1/LogServices/PlatformLog/Entries", "redfish/platformlog", true),
    ("supermicro-sys821ge-bmc-11.01", "/redfish/v1/Systems/1/LogServices/Log1/Entries", "redfish/sel", true),
];

/// Adds `new` (oldest first) where the log keeps its newest entries.
fn add_newest(bmc: &TestBmc, path: &str, oldest_first: bool, new: Vec<Value>) {
    if oldest_first {
        bmc.edit(path, |v| {
            let mut members = v["Members"].as_array().unwrap().clone();
            members.extend(new);
            v["Members@odata.count"] = json!(members.len());
            v["Members"] = Value::Array(members);
        });
    } else {
        prepend(bmc, path, new.into_iter().rev().collect());
    }
}

fn newest_id(set: &str, path: &str) -> u64 {
    let members = fixture_json(set, path)["Members"].as_array().unwrap().clone();
    members.iter().filter_map(|m| m["Id"].as_str().and_then(|id| id.parse().ok())).max().unwrap()
}

#[tokio::test]
async fn every_vendors_event_log_reports_new_entries_once_in_order() {
    for (set, path, source, oldest_first) in VENDOR_LOGS {
        let bmc = TestBmc::start(set).await;
        let state = memory_state();
        let mut p = RedfishProbe::new(bmc.config(), state.clone()).unwrap();
        let first = poll_and_spool(&mut p, &state).await;
        assert!(events(&first).is_empty(), "{set}: history replayed on the first poll");
        let n = newest_id(set, path);
        add_newest(
            &bmc,
            path,
            oldest_first,
            vec![
                entry(path, n + 1, "2026-11-23T09:00:00Z", "Warning", "FAN0001", "fan 3 slow"),
                entry(path, n + 2, "2026-11-23T09:00:05Z", "Critical", "PSU0003", "power supply 2 lost AC"),
            ],
        );
        let ev: Vec<_> = events(&poll_and_spool(&mut p, &state).await);
        let got: Vec<(&str, &str, &str)> =
            ev.iter().map(|e| (e.source.as_str(), e.severity.as_str(), e.message.as_str())).collect();
        assert_eq!(
            got,
            [(source, "Warning", "fan 3 slow"), (source, "Critical", "power supply 2 lost AC")],
            "{set} {path}"
        );
        assert!(events(&poll_and_spool(&mut p, &state).await).is_empty(), "{set}: reported twice");
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_paged_oldest_first_log_is_read_from_its_end() {
    let (set, path, source, _) = VENDOR_LOGS[3];
    let bmc = TestBmc::start(set).await;
    bmc.state.entries_page_size.store(10, std::sync::atomic::Ordering::SeqCst);
    let total = fixture_json(set, path)["Members"].as_array().unwrap().len();
    assert!(total > 20, "the capture should need several pages");
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    assert!(events(&p.poll().await).is_empty());
    let n = newest_id(set, path);
    // 12 new entries: more than one page, so the page before the last is read too.
    let new: Vec<Value> = (1..=12)
        .map(|i| entry(path, n + i, &format!("2026-11-23T09:00:{i:02}Z"), "OK", "SEL0001", &format!("e{i}")))
        .collect();
    add_newest(&bmc, path, true, new);
    bmc.reset_seen();
    let ev: Vec<_> = events(&p.poll().await).into_iter().filter(|e| e.source == source).collect();
    let want: Vec<String> = (1..=12).map(|i| format!("e{i}")).collect();
    assert_eq!(ev.iter().map(|e| e.message.clone()).collect::<Vec<_>>(), want);
    // From the end, not every page from the start.
    let pages: Vec<String> =
        bmc.seen().iter().filter(|s| s.target.starts_with(path)).map(|s| s.target.clone()).collect();
    assert!(pages.len() <= 4, "{pages:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_paged_oldest_first_log_without_count_or_skip_is_walked_to_its_end() {
    let (set, path, source, _) = VENDOR_LOGS[3];
    for (hide_count, ignore_skip) in [(true, false), (false, true), (true, true)] {
        let bmc = TestBmc::start(set).await;
        bmc.state.entries_page_size.store(10, std::sync::atomic::Ordering::SeqCst);
        bmc.state.entries_hide_count.store(hide_count, std::sync::atomic::Ordering::SeqCst);
        bmc.state.entries_ignore_skip.store(ignore_skip, std::sync::atomic::Ordering::SeqCst);
        let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
        assert!(events(&p.poll().await).is_empty());
        let n = newest_id(set, path);
        let new: Vec<Value> = (1..=3)
            .map(|i| entry(path, n + i, &format!("2026-11-23T09:00:{i:02}Z"), "OK", "SEL0001", &format!("e{i}")))
            .collect();
        add_newest(&bmc, path, true, new);
        let ev: Vec<_> = events(&p.poll().await).into_iter().filter(|e| e.source == source).collect();
        assert_eq!(
            ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["e1", "e2", "e3"],
            "count hidden {hide_count}, $skip ignored {ignore_skip}"
        );
        assert!(events(&p.poll().await).is_empty(), "reported twice");
        p.shutdown().await;
    }
}
