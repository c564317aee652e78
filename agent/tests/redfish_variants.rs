//! Fault variants of the R750 fixture, derived in memory: failed PSU, hot sensor, null reading, empty slot, powered-off server, failed drive and DIMM, active faults.

#[path = "redfish_support/mod.rs"]
mod common;

use common::*;
use pikett_agent::observation::State;
use serde_json::{Value, json};

const CH: &str = "/redfish/v1/Chassis/System.Embedded.1";
const SYS: &str = "/redfish/v1/Systems/System.Embedded.1";

#[tokio::test]
async fn failed_psu_is_critical_and_names_part_serial_and_service_tag() {
    let bmc = TestBmc::start(R750).await;
    let psu = format!("{CH}/PowerSubsystem/PowerSupplies/PSU.Slot.2");
    bmc.edit(&psu, |v| v["Status"]["Health"] = json!("Critical"));
    bmc.edit(&format!("{CH}/Power"), |v| v["PowerSupplies"][1]["Status"]["Health"] = json!("Critical"));
    let fixture = fixture_json(R750, &psu);
    let obs = poll_once(&bmc).await;
    let c = &checks(&obs)["redfish/psu/PS2 Status"];
    assert_eq!(c.state, State::Critical, "{}", c.summary);
    for needle in [
        fixture["SerialNumber"].as_str().unwrap(),
        fixture["PartNumber"].as_str().unwrap(),
        fixture["@odata.id"].as_str().unwrap(),
        "service tag F54P1G3",
        "health Critical",
    ] {
        assert!(c.summary.contains(needle), "{:?} lacks {needle}", c.summary);
    }
    assert_eq!(checks(&obs)["redfish/psu/PS1 Status"].state, State::Ok);
}

#[tokio::test]
async fn temperature_over_thresholds_is_warning_then_critical() {
    let bmc = TestBmc::start(R750).await;
    let inlet = format!("{CH}/Sensors/SystemBoardInletTemp");
    let fx = fixture_json(R750, &inlet);
    let warn = fx["Thresholds"]["UpperCaution"]["Reading"].as_f64().unwrap();
    let crit = fx["Thresholds"]["UpperCritical"]["Reading"].as_f64().unwrap();

    bmc.edit(&inlet, |v| v["Reading"] = json!(warn + 1.5));
    let c = checks(&poll_once(&bmc).await)["redfish/thermal/System Board Inlet Temp"].clone();
    assert_eq!(c.state, State::Warning, "{}", c.summary);

    bmc.edit(&inlet, |v| v["Reading"] = json!(crit + 3.0));
    let obs = poll_once(&bmc).await;
    let c = &checks(&obs)["redfish/thermal/System Board Inlet Temp"];
    assert_eq!(c.state, State::Critical, "{}", c.summary);
    assert!(c.summary.starts_with(&format!("{} Cel (warn {}, crit {}", crit + 3.0, warn, crit)), "{}", c.summary);
    assert!(c.summary.contains("service tag F54P1G3") && c.summary.contains(&inlet), "{}", c.summary);
    assert_eq!(
        sample(&obs, "pikett_redfish_temperature_celsius", "sensor", "System Board Inlet Temp").unwrap().0,
        crit + 3.0
    );
}

#[tokio::test]
async fn low_fan_speed_maps_lower_thresholds() {
    let bmc = TestBmc::start(R750).await;
    let fan = format!("{CH}/Sensors/Fan.Embedded.3A");
    let fx = fixture_json(R750, &fan);
    let low_crit = fx["Thresholds"]["LowerCritical"]["Reading"].as_f64().unwrap();
    bmc.edit(&fan, |v| v["Reading"] = json!(low_crit - 100.0));
    let c = checks(&poll_once(&bmc).await)["redfish/fan/System Board Fan3A"].clone();
    assert_eq!(c.state, State::Critical, "{}", c.summary);
}

#[tokio::test]
async fn health_warning_on_a_sensor_with_normal_reading_is_warning() {
    let bmc = TestBmc::start(R750).await;
    bmc.edit(&format!("{CH}/Sensors/CPU2Temp"), |v| v["Status"]["Health"] = json!("Warning"));
    let c = checks(&poll_once(&bmc).await)["redfish/thermal/CPU2 Temp"].clone();
    assert_eq!(c.state, State::Warning, "{}", c.summary);
    assert!(c.summary.contains("health Warning"), "{}", c.summary);
}

#[tokio::test]
async fn null_reading_is_unknown_and_says_what_is_missing() {
    let bmc = TestBmc::start(R750).await;
    bmc.edit(&format!("{CH}/Sensors/CPU1Temp"), |v| v["Reading"] = Value::Null);
    let obs = poll_once(&bmc).await;
    let c = &checks(&obs)["redfish/thermal/CPU1 Temp"];
    assert_eq!(c.state, State::Unknown);
    assert!(c.summary.contains("no reading") && c.summary.contains("Reading"), "{}", c.summary);
    assert!(
        sample(&obs, "pikett_redfish_temperature_celsius", "sensor", "CPU1 Temp").is_none(),
        "a null must not become 0"
    );
}

#[tokio::test]
async fn absent_psu_slot_is_skipped_not_a_fault() {
    let bmc = TestBmc::start(R750).await;
    bmc.edit(&format!("{CH}/PowerSubsystem/PowerSupplies/PSU.Slot.2"), |v| {
        v["Status"] = json!({"State": "Absent", "Health": null});
    });
    bmc.edit(&format!("{CH}/Power"), |v| v["PowerSupplies"][1]["Status"] = json!({"State": "Absent", "Health": null}));
    let all = checks(&poll_once(&bmc).await);
    assert!(!all.contains_key("redfish/psu/PS2 Status"), "absent slot reported");
    assert!(!all.contains_key("redfish/psu/1"), "absent slot reported under its MemberId");
    assert_eq!(all["redfish/psu/PS1 Status"].state, State::Ok);
    assert!(
        all.values().all(|c| c.state == State::Ok),
        "{:?}",
        all.values().filter(|c| c.state != State::Ok).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn powered_off_server_reports_readings_unavailable_not_critical() {
    let bmc = TestBmc::start(R750).await;
    bmc.edit(SYS, |v| v["PowerState"] = json!("Off"));
    let sensors = fixture_json(R750, &format!("{CH}/Sensors"));
    for m in sensors["Members"].as_array().unwrap() {
        let p = m["@odata.id"].as_str().unwrap();
        let rt = fixture_json(R750, p)["ReadingType"].as_str().unwrap().to_string();
        if rt == "Temperature" || rt == "Rotational" {
            bmc.edit(p, |v| {
                v["Reading"] = Value::Null;
                v["Status"]["Health"] = Value::Null;
            });
        }
    }
    bmc.edit(&format!("{CH}/Thermal"), |v| {
        for t in v["Temperatures"].as_array_mut().unwrap() {
            t["ReadingCelsius"] = Value::Null;
        }
        for f in v["Fans"].as_array_mut().unwrap() {
            f["Reading"] = Value::Null;
        }
    });
    let obs = poll_once(&bmc).await;
    let all = checks(&obs);
    let sys = &all["redfish/system"];
    assert_eq!(sys.state, State::Ok, "{}", sys.summary);
    assert!(sys.summary.contains("power Off"), "{}", sys.summary);
    let temps: Vec<_> = all.values().filter(|c| c.name.starts_with("redfish/thermal/")).collect();
    assert!(!temps.is_empty());
    for c in temps.iter().chain(all.values().filter(|c| c.name.starts_with("redfish/fan/")).collect::<Vec<_>>().iter())
    {
        assert_eq!(c.state, State::Unknown, "{} {}", c.name, c.summary);
        assert!(c.summary.contains("power state Off"), "{}", c.summary);
    }
    assert!(all.values().all(|c| c.state != State::Critical));
}

#[tokio::test]
async fn failed_drive_is_critical_with_serial_and_predicted_failure_warns() {
    let bmc = TestBmc::start(R750).await;
    let d1 = format!("{SYS}/Storage/CPU.1/Drives/Disk.Bay.1:Enclosure.Internal.0-1");
    let d2 = format!("{SYS}/Storage/CPU.1/Drives/Disk.Bay.2:Enclosure.Internal.0-1");
    bmc.edit(&d1, |v| v["Status"]["Health"] = json!("Critical"));
    bmc.edit(&d2, |v| v["FailurePredicted"] = json!(true));
    let all = checks(&poll_once(&bmc).await);
    let c = &all["redfish/drive/Disk.Bay.1"];
    assert_eq!(c.state, State::Critical);
    let serial = fixture_json(R750, &d1)["SerialNumber"].as_str().unwrap().to_string();
    assert!(c.summary.contains(&serial) && c.summary.contains("service tag F54P1G3"), "{}", c.summary);
    assert_eq!(all["redfish/drive/Disk.Bay.2"].state, State::Warning);
    assert_eq!(all["redfish/drive/Disk.Bay.0"].state, State::Ok);
}

#[tokio::test]
async fn failed_dimm_turns_memory_rollup_critical_and_names_the_module() {
    let bmc = TestBmc::start(R750).await;
    bmc.edit(SYS, |v| v["MemorySummary"]["Status"]["HealthRollup"] = json!("Critical"));
    let dimm = format!("{SYS}/Memory/DIMM.Socket.A5");
    bmc.edit(&dimm, |v| v["Status"]["Health"] = json!("Critical"));
    let c = checks(&poll_once(&bmc).await)["redfish/memory"].clone();
    assert_eq!(c.state, State::Critical, "{}", c.summary);
    let fx = fixture_json(R750, &dimm);
    assert!(c.summary.contains(fx["Name"].as_str().unwrap()), "{}", c.summary);
    assert!(c.summary.contains(fx["SerialNumber"].as_str().unwrap()), "{}", c.summary);
    assert!(c.summary.contains("service tag F54P1G3"), "{}", c.summary);
}

#[tokio::test]
async fn active_fault_list_entries_raise_redfish_faults() {
    let bmc = TestBmc::start(R750).await;
    bmc.edit("/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/FaultList/Entries", |v| {
        v["Members"] = json!([{
            "@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/FaultList/Entries/1",
            "Id": "1", "Created": "2026-11-23T09:00:00-06:00", "MessageId": "PSU0003",
            "Message": "Power supply 2 is lost.", "Severity": "Critical"
        }]);
    });
    let c = checks(&poll_once(&bmc).await)["redfish/faults"].clone();
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("PSU0003") && c.summary.contains("Power supply 2 is lost."), "{}", c.summary);
}
