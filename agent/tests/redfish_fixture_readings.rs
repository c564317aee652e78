//! Every temperature, fan, PSU, voltage and drive of every fixture set comes out with the fixture's value, thresholds and state.

#[path = "redfish_support/mod.rs"]
mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use pikett_agent::observation::{Observation, State};
use serde_json::Value;

fn link(v: &Value, key: &str) -> Option<String> {
    v.get(key)?.get("@odata.id")?.as_str().map(str::to_string)
}

fn members(set: &str, v: &Value, key: &str) -> Vec<Value> {
    let Some(coll) = link(v, key) else {
        return vec![];
    };
    fixture_json(set, &coll)["Members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| fixture_json(set, m["@odata.id"].as_str().unwrap()))
        .collect()
}

fn num_text(v: f64) -> String {
    if v.fract() == 0.0 { format!("{}", v as i64) } else { format!("{v}") }
}

/// Expected state, written independently of the probe: the mapping of docs/agent-test-output.md
/// (the worse of the threshold state and the sensor's health).
fn expected_state(reading: Option<f64>, th: &HashMap<&str, Option<f64>>, health: Option<&str>) -> State {
    let health_state = match health {
        Some("Warning") => State::Warning,
        Some("Critical") => State::Critical,
        _ => State::Ok,
    };
    let Some(r) = reading else {
        return State::Unknown.worst(health_state);
    };
    let hit_up = |k: &str| th.get(k).copied().flatten().is_some_and(|t| r >= t);
    let hit_low = |k: &str| th.get(k).copied().flatten().is_some_and(|t| r <= t);
    let t = if hit_up("crit") || hit_up("fatal") || hit_low("low crit") || hit_low("low fatal") {
        State::Critical
    } else if hit_up("warn") || hit_low("low warn") {
        State::Warning
    } else {
        State::Ok
    };
    t.worst(health_state)
}

struct Expect {
    check: String,
    metric: &'static str,
    label: String,
    value: Option<f64>,
    unit: &'static str,
    thresholds: HashMap<&'static str, Option<f64>>,
    health: Option<String>,
    /// `ReadingUnits` present but empty: a state sensor, judged by its health alone.
    discrete: bool,
}

/// A healthy sensor not in service (empty slot, disabled channel) without a reading:
/// never reported.
fn not_in_service(s: &Value, reading: Option<f64>) -> bool {
    let state = s["Status"]["State"].as_str().unwrap_or("Enabled");
    let healthy = matches!(s["Status"]["Health"].as_str(), None | Some("OK"));
    healthy
        && reading.is_none()
        && ["Absent", "Disabled", "UnavailableOffline", "StandbyOffline", "StandbySpare"].contains(&state)
}

fn sensor_thresholds(s: &Value) -> HashMap<&'static str, Option<f64>> {
    let t = |k: &str| s["Thresholds"][k]["Reading"].as_f64();
    HashMap::from([
        ("warn", t("UpperCaution")),
        ("crit", t("UpperCritical")),
        ("fatal", t("UpperFatal")),
        ("low warn", t("LowerCaution")),
        ("low crit", t("LowerCritical")),
        ("low fatal", t("LowerFatal")),
    ])
}

fn classic_thresholds(s: &Value) -> HashMap<&'static str, Option<f64>> {
    let t = |k: &str| s[k].as_f64();
    HashMap::from([
        ("warn", t("UpperThresholdNonCritical")),
        ("crit", t("UpperThresholdCritical")),
        ("fatal", t("UpperThresholdFatal")),
        ("low warn", t("LowerThresholdNonCritical")),
        ("low crit", t("LowerThresholdCritical")),
        ("low fatal", t("LowerThresholdFatal")),
    ])
}

fn assert_reading(obs: &[Observation], e: &Expect) {
    let checks = checks(obs);
    let c = checks.get(&e.check).unwrap_or_else(|| panic!("no check {}", e.check));
    if e.discrete {
        assert_eq!(c.state, expected_state(Some(0.0), &HashMap::new(), e.health.as_deref()), "{}", e.check);
        assert!(c.summary.starts_with("discrete sensor"), "{}: {}", e.check, c.summary);
        assert!(sample(obs, e.metric, "sensor", &e.label).is_none(), "{}: a state code exported as a sample", e.check);
        return;
    }
    let want = expected_state(e.value, &e.thresholds, e.health.as_deref());
    // A voltage without reading and thresholds is a discrete signal: its health is its state.
    let want = if e.value.is_none() && e.unit == "V" && e.thresholds.values().all(Option::is_none) && e.health.is_some()
    {
        expected_state(Some(0.0), &HashMap::new(), e.health.as_deref())
    } else {
        want
    };
    assert_eq!(c.state, want, "{}: {}", e.check, c.summary);
    match e.value {
        Some(v) => {
            let (got, unit) =
                sample(obs, e.metric, "sensor", &e.label).unwrap_or_else(|| panic!("no sample for {}", e.check));
            assert_eq!(got, v, "{}", e.check);
            assert_eq!(unit, e.unit, "{}", e.check);
            assert!(c.summary.starts_with(&format!("{} {}", num_text(v), e.unit)), "{}: {}", e.check, c.summary);
            for (label, t) in &e.thresholds {
                if let Some(t) = t {
                    let needle = format!("{label} {}", num_text(*t));
                    assert!(
                        c.summary.split(['(', ',', ')']).any(|p| p.trim() == needle),
                        "{}: summary {:?} lacks {needle:?}",
                        e.check,
                        c.summary
                    );
                }
            }
        }
        None => assert!(sample(obs, e.metric, "sensor", &e.label).is_none(), "{}", e.check),
    }
}

/// Walks the fixture (not the probe) and lists what must be reported.
/// Readings to check in full, drives, PSUs with their metrics, check names that must merely
/// exist, and check names that must not (sensors not in service).
type Expectations = (Vec<Expect>, Vec<Value>, Vec<(Value, Option<Value>)>, BTreeSet<String>, BTreeSet<String>);

fn expectations(set: &str) -> Expectations {
    let root = fixture_json(set, "/redfish/v1");
    let mut out = Vec::new();
    let mut drives = Vec::new();
    let mut psus = Vec::new();
    let mut names_only = BTreeSet::new();
    let mut skipped = BTreeSet::new();
    for ch in members(set, &root, "Chassis") {
        let mut new_names: BTreeSet<(String, String)> = BTreeSet::new();
        let psu_list: Vec<(Value, Option<Value>)> = match link(&ch, "PowerSubsystem") {
            Some(p) => members(set, &fixture_json(set, &p), "PowerSupplies")
                .into_iter()
                .map(|p| {
                    let m = link(&p, "Metrics").map(|m| fixture_json(set, &m));
                    (p, m)
                })
                .collect(),
            None => vec![],
        };
        let psu_sources: BTreeSet<String> = psu_list
            .iter()
            .filter_map(|(_, m)| m.as_ref())
            .flat_map(|m| [&m["InputPowerWatts"]["DataSourceUri"], &m["OutputPowerWatts"]["DataSourceUri"]])
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let sensors = members(set, &ch, "Sensors");
        let mut name_count: HashMap<(String, String), usize> = HashMap::new();
        for s in &sensors {
            let rt = s["ReadingType"].as_str().unwrap_or("").to_string();
            *name_count.entry((rt, s["Name"].as_str().unwrap().to_string())).or_default() += 1;
        }
        for s in &sensors {
            let rt = s["ReadingType"].as_str().unwrap_or("");
            let (seg, metric, unit) = match rt {
                "Temperature" => ("thermal", "pikett_redfish_temperature_celsius", "Cel"),
                "Rotational" => ("fan", "pikett_redfish_fan_speed_rpm", "RPM"),
                "Voltage" => ("voltage", "pikett_redfish_voltage_volts", "V"),
                "Power" => ("power", "pikett_redfish_power_watts", "W"),
                _ => continue,
            };
            if psu_sources.contains(s["@odata.id"].as_str().unwrap()) {
                continue;
            }
            let name = s["Name"].as_str().unwrap().to_string();
            let label = if name_count[&(rt.to_string(), name.clone())] > 1 {
                s["Id"].as_str().unwrap().to_string()
            } else {
                name.clone()
            };
            new_names.insert((seg.to_string(), name.clone()));
            if not_in_service(s, s["Reading"].as_f64()) {
                skipped.insert(format!("redfish/{seg}/{label}"));
                continue;
            }
            out.push(Expect {
                check: format!("redfish/{seg}/{label}"),
                metric,
                label,
                value: s["Reading"].as_f64(),
                unit,
                thresholds: sensor_thresholds(s),
                health: s["Status"]["Health"].as_str().map(str::to_string),
                discrete: s["ReadingUnits"].as_str().is_some_and(|u| u.trim().is_empty())
                    && sensor_thresholds(s).values().all(Option::is_none),
            });
        }
        // Old schema: every entry must be reported once; its value is checked when no new sensor supersedes it.
        let mut classic = Vec::new();
        if let Some(t) = link(&ch, "Thermal") {
            let t = fixture_json(set, &t);
            for x in t["Temperatures"].as_array().into_iter().flatten() {
                classic.push((
                    "thermal",
                    "pikett_redfish_temperature_celsius",
                    "Cel",
                    x.clone(),
                    x["ReadingCelsius"].as_f64(),
                ));
            }
            for x in t["Fans"].as_array().into_iter().flatten() {
                classic.push(("fan", "pikett_redfish_fan_speed_rpm", "RPM", x.clone(), x["Reading"].as_f64()));
            }
        }
        if let Some(p) = link(&ch, "Power") {
            let p = fixture_json(set, &p);
            for x in p["Voltages"].as_array().into_iter().flatten() {
                classic.push(("voltage", "pikett_redfish_voltage_volts", "V", x.clone(), x["ReadingVolts"].as_f64()));
            }
            // The old total (PowerControl) unless a new board-level power sensor measures it.
            let board_power = sensors.iter().any(|s| {
                s["ReadingType"] == "Power"
                    && s["PhysicalContext"] != "PowerSupply"
                    && !s["ReadingUnits"].as_str().is_some_and(|u| u.trim().is_empty())
                    && !psu_sources.contains(s["@odata.id"].as_str().unwrap_or(""))
            });
            if !board_power {
                for x in p["PowerControl"].as_array().into_iter().flatten() {
                    classic.push((
                        "power",
                        "pikett_redfish_power_watts",
                        "W",
                        x.clone(),
                        x["PowerConsumedWatts"].as_f64(),
                    ));
                }
            }
            for x in p["PowerSupplies"].as_array().into_iter().flatten() {
                // The same PSU in the new schema (same name or serial number) stands for it.
                let same = |(n, _): &(Value, Option<Value>)| {
                    n["Name"] == x["Name"] || (x["SerialNumber"].is_string() && n["SerialNumber"] == x["SerialNumber"])
                };
                if !psu_list.iter().any(same) {
                    names_only.insert(format!("redfish/psu/{}", x["Name"].as_str().unwrap()));
                }
            }
        }
        for (seg, metric, unit, x, value) in classic {
            let name = x["Name"].as_str().unwrap().to_string();
            let check = format!("redfish/{seg}/{name}");
            if new_names.contains(&(seg.to_string(), name.clone())) {
                // The new schema's sensor stands for it (or, not in service, for neither).
                if !skipped.contains(&check) {
                    names_only.insert(check);
                }
                continue;
            }
            if not_in_service(&x, value) {
                skipped.insert(check);
                continue;
            }
            out.push(Expect {
                check: format!("redfish/{seg}/{name}"),
                metric,
                label: name,
                value,
                unit,
                thresholds: classic_thresholds(&x),
                health: x["Status"]["Health"].as_str().map(str::to_string),
                discrete: false,
            });
        }
        if let Some(t) = link(&ch, "ThermalSubsystem") {
            for f in members(set, &fixture_json(set, &t), "Fans") {
                let label = f["Location"]["PartLocation"]["ServiceLabel"].as_str().or(f["Name"].as_str()).unwrap();
                names_only.insert(format!("redfish/fan/{label}"));
            }
        }
        psus.extend(psu_list);
    }
    for sys in members(set, &root, "Systems") {
        for st in members(set, &sys, "Storage") {
            for d in st["Drives"].as_array().into_iter().flatten() {
                drives.push(fixture_json(set, d["@odata.id"].as_str().unwrap()));
            }
        }
    }
    (out, drives, psus, names_only, skipped)
}

#[tokio::test]
async fn every_reading_of_every_fixture_set_matches_the_fixture() {
    let sets = fixture_sets();
    assert!(!sets.is_empty(), "no fixture sets under {}", fixtures_dir().display());
    for set in sets {
        let bmc = TestBmc::start(&set).await;
        let obs = poll_once(&bmc).await;
        let all = checks(&obs);
        let (readings, drives, psus, names_only, skipped) = expectations(&set);
        assert!(readings.len() >= 10, "{set}: suspiciously few readings");
        for e in &readings {
            assert_reading(&obs, e);
        }
        for n in &names_only {
            assert!(all.contains_key(n), "{set}: {n} not reported");
        }
        for n in &skipped {
            assert!(!all.contains_key(n), "{set}: {n} is not in service but reported: {}", all[n].summary);
        }
        // Every present sensor exactly once: the reported sensor checks are exactly the
        // fixture's, nothing twice under another name.
        let mut want: BTreeSet<String> = readings.iter().map(|e| e.check.clone()).collect();
        want.extend(names_only.iter().cloned());
        want.extend(psus.iter().map(|(p, _)| format!("redfish/psu/{}", p["Name"].as_str().unwrap())));
        let sensor_checks: BTreeSet<String> = all
            .keys()
            .filter(|n| ["thermal", "fan", "voltage", "power", "psu"].contains(&n.split('/').nth(1).unwrap_or("")))
            .cloned()
            .collect();
        assert_eq!(
            sensor_checks.difference(&want).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{set}: reported but not in the fixture (or twice)"
        );
        assert_eq!(
            want.difference(&sensor_checks).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{set}: in the fixture but not reported"
        );
        for (p, metrics) in &psus {
            let name = p["Name"].as_str().unwrap();
            let c = &all[&format!("redfish/psu/{name}")];
            let want = expected_state(Some(0.0), &HashMap::new(), p["Status"]["Health"].as_str());
            assert_eq!(c.state, want, "{name}: {}", c.summary);
            if let Some(m) = metrics {
                for (metric, key) in [
                    ("pikett_redfish_psu_input_watts", "InputPowerWatts"),
                    ("pikett_redfish_psu_output_watts", "OutputPowerWatts"),
                ] {
                    if let Some(v) = m[key]["Reading"].as_f64() {
                        assert_eq!(sample(&obs, metric, "psu", name), Some((v, "W".to_string())), "{name} {key}");
                    }
                }
            }
        }
        for d in &drives {
            let id = d["Id"].as_str().unwrap();
            let short = id.split(':').next().unwrap();
            let c = all.get(&format!("redfish/drive/{short}")).unwrap_or_else(|| panic!("{set}: no drive {short}"));
            let want = expected_state(Some(0.0), &HashMap::new(), d["Status"]["Health"].as_str());
            assert_eq!(c.state, want, "{id}: {}", c.summary);
            for k in ["SerialNumber", "Model"] {
                if let Some(s) = d[k].as_str() {
                    assert!(c.summary.contains(s.trim()), "{id}: summary {:?} lacks {k} {s}", c.summary);
                }
            }
            if let Some(life) = d["PredictedMediaLifeLeftPercent"].as_f64() {
                assert_eq!(
                    sample(&obs, "pikett_redfish_drive_life_left_percent", "drive", short),
                    Some((life, "%".into()))
                );
            }
        }
        // The number staff quote to the vendor: Dell's service tag, else the serial number;
        // never another vendor's SKU (a part or machine-type number).
        let root = fixture_json(&set, "/redfish/v1");
        let sys = &members(&set, &root, "Systems")[0];
        let serial = sys["SerialNumber"].as_str().unwrap();
        let (label, want) = match root["Oem"]["Dell"]["ServiceTag"].as_str() {
            Some(tag) => ("service tag", tag),
            None => ("serial", serial),
        };
        let system = &all["redfish/system"];
        assert!(system.summary.contains(&format!("{label} {want}")), "{set}: {}", system.summary);
        if let Some(sku) = sys["SKU"].as_str().filter(|_| label == "serial") {
            assert!(!system.summary.contains(sku), "{set}: SKU {sku} taken for the serial: {}", system.summary);
        }
        let inv = obs
            .iter()
            .find_map(|o| match o {
                Observation::Inventory(i) if i.name == "hardware" => Some(i.data.clone()),
                _ => None,
            })
            .expect("hardware inventory");
        assert_eq!(inv["service_tag"].as_str(), Some(want), "{set}");
        assert_eq!(inv["serial_number"].as_str(), Some(serial), "{set}");
        // The sets are healthy captures: nothing may be flagged.
        for c in all.values() {
            assert_eq!(c.state, State::Ok, "{set}: {} {}", c.name, c.summary);
        }
        // No sample twice.
        let mut keys = BTreeSet::new();
        for o in &obs {
            if let Observation::Sample(s) = o {
                assert!(
                    keys.insert((s.name.clone(), s.labels.clone())),
                    "{set}: sample {} {:?} twice",
                    s.name,
                    s.labels
                );
            }
        }
    }
}

#[tokio::test]
async fn system_health_power_state_and_inventory_come_from_the_fixture() {
    let bmc = TestBmc::start(R750).await;
    let obs = poll_once(&bmc).await;
    let sys = fixture_json(R750, "/redfish/v1/Systems/System.Embedded.1");
    let mgr = fixture_json(R750, "/redfish/v1/Managers/iDRAC.Embedded.1");
    let root = fixture_json(R750, "/redfish/v1");
    let all = checks(&obs);
    let system = &all["redfish/system"];
    assert_eq!(system.state, State::Ok);
    let tag = root["Oem"]["Dell"]["ServiceTag"].as_str().unwrap();
    assert!(system.summary.contains(tag), "{}", system.summary);
    assert!(system.summary.contains(&format!("power {}", sys["PowerState"].as_str().unwrap())), "{}", system.summary);
    assert_eq!(all["redfish/memory"].state, State::Ok);
    assert_eq!(all["redfish/processor"].state, State::Ok);
    assert_eq!(all["redfish/faults"].summary, "no active faults");
    let inv = obs
        .iter()
        .find_map(|o| match o {
            Observation::Inventory(i) if i.name == "hardware" => Some(i.data.clone()),
            _ => None,
        })
        .expect("hardware inventory");
    assert_eq!(inv["vendor"], sys["Manufacturer"]);
    assert_eq!(inv["model"], sys["Model"]);
    assert_eq!(inv["service_tag"].as_str(), Some(tag));
    assert_eq!(inv["bios_version"], sys["BiosVersion"]);
    assert_eq!(inv["bmc_firmware"], mgr["FirmwareVersion"]);
    // JSON lines as `pikett-agent test` prints them.
    for o in &obs {
        let line = serde_json::to_string(o).unwrap();
        assert!(!line.contains('\n'));
        let back: Observation = serde_json::from_str(&line).unwrap();
        assert_eq!(&back, o);
    }
}

#[tokio::test]
async fn expand_cuts_requests_and_changes_nothing_else() {
    let bmc = TestBmc::start(R750).await;
    let with = poll_once(&bmc).await;
    let with_requests = bmc.seen().len();
    assert!(bmc.seen().iter().any(|s| s.target.contains("$expand=.($levels=1)")), "expand not used");
    bmc.reset_seen();
    let mut cfg = bmc.config();
    cfg.expand = pikett_agent::probes::redfish::ExpandMode::Off;
    let mut p = pikett_agent::probes::redfish::RedfishProbe::new(cfg, memory_state()).unwrap();
    use pikett_agent::probes::Probe;
    let without = p.poll().await;
    p.shutdown().await;
    let without_requests = bmc.seen().len();
    assert!(!bmc.seen().iter().any(|s| s.target.contains("$expand")));
    assert!(with_requests * 2 < without_requests, "expand {with_requests} vs plain {without_requests} requests");
    let strip = |obs: &[Observation]| -> Vec<(String, State, String)> {
        checks(obs).into_values().filter(|c| c.name != "redfish/bmc").map(|c| (c.name, c.state, c.summary)).collect()
    };
    assert_eq!(strip(&with), strip(&without));
}
