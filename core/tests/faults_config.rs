//! The fault engine's config sections, parsed from a collector.toml as the collector will.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use pikett_core::faults::{
    CompareOp, Engine, EngineConfig, EventKind, FaultsConfig, HostConfig, HostDeps, MatchOp, Rule, SampleInput,
    Severity,
};
use serde::Deserialize;

/// The collector's config as far as the fault engine is concerned.
#[derive(Deserialize)]
struct CollectorFile {
    #[serde(default)]
    faults: FaultsConfig,
    #[serde(default)]
    hosts: BTreeMap<String, HostConfig>,
    #[serde(default)]
    rules: Vec<Rule>,
}

fn load(text: &str) -> Result<EngineConfig, String> {
    let file: CollectorFile = toml::from_str(text).map_err(|e| e.to_string())?;
    EngineConfig::new(file.faults, file.rules, HostDeps::from_hosts(&file.hosts)).map_err(|e| e.to_string())
}

const FILE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/faults/collector-faults.toml"));

#[test]
fn the_example_config_parses_into_an_engine_config() {
    let c = load(FILE).unwrap();
    assert_eq!(c.faults.for_results, 3);
    assert_eq!(c.faults.unknown_severity, Severity::Critical);
    assert_eq!(c.faults.flap_changes, 4);
    assert_eq!(c.faults.flap_window, Duration::from_secs(1800));
    assert_eq!(c.deps.parents("web-2"), ["gw-1".to_string()]);
    assert_eq!(c.rules.len(), 2);
    assert_eq!(c.rules[0].for_duration, Duration::from_secs(300));
    assert_eq!(c.rules[1].op, CompareOp::Ge);
    assert_eq!(c.rules[1].labels["mount"].op, MatchOp::Ne);
    assert_eq!(c.rules[1].severity, Severity::Warning, "default severity");
}

#[test]
fn the_example_rule_fires_with_its_summary_template() {
    let mut e = Engine::new(load(FILE).unwrap()).unwrap();
    let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
    let sample = |v: f64, s: i64| SampleInput {
        host: "web-1".into(),
        customer: "acme".into(),
        name: "pikett_redfish_temperature_celsius".into(),
        labels: BTreeMap::from([("sensor".to_string(), "CPU1 Temp".to_string())]),
        value: v,
        time: at(s),
    };
    assert!(e.sample(&sample(90.0, 0), at(0)).is_empty());
    let out = e.sample(&sample(91.0, 300), at(300));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, EventKind::Opened);
    let f = e.fault(out[0].fault_id).unwrap();
    assert_eq!(f.last_summary, "CPU1 Temp at 91 Cel (limit 85)");
    assert_eq!(f.check, r#"rule/cpu-hot{sensor="CPU1 Temp"}"#);
}

#[test]
fn a_typo_in_the_faults_section_names_the_key() {
    let err = load("[faults]\nflap_windw = \"1h\"\n").unwrap_err();
    assert!(err.contains("flap_windw"), "{err}");
}

#[test]
fn a_dependency_cycle_names_the_hosts() {
    let err = load("[hosts.a]\ndepends_on = [\"b\"]\n[hosts.b]\ndepends_on = [\"a\"]\n").unwrap_err();
    assert!(err.contains("a -> b -> a"), "{err}");
}

#[test]
fn a_duplicate_rule_name_is_refused() {
    let rule = "[[rules]]\nname = \"x\"\nmetric = \"m\"\nop = \">\"\nthreshold = 1\n";
    let err = load(&format!("{rule}{rule}")).unwrap_err();
    assert!(err.contains("rules[1].name") && err.contains("used twice"), "{err}");
}

#[test]
fn a_duration_where_for_wants_a_count_is_refused_clearly() {
    let err = load("[faults]\nfor = \"2m\"\n").unwrap_err();
    assert!(err.contains("for") && err.contains("u32"), "{err}");
}
