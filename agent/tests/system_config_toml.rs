//! The `[services]` and `[patches]` sections as docs/configuration.md writes them, parsed from TOML.

use std::time::Duration;

use pikett_agent::probes::patches::{Manager, PatchesConfig};
use pikett_agent::probes::services::ServicesConfig;

#[derive(serde::Deserialize)]
struct Agent {
    services: ServicesConfig,
    patches: PatchesConfig,
}

#[test]
fn spec_example_sections_parse() {
    let text = r#"
[services]                           # systemd units
units = ["sshd.service", "nginx.service", "mariadb.service"]
failed_units = true                  # also report any unit in the failed state
interval = "30s"

[patches]
manager = "auto"                     # auto | dnf | yum | apt
interval = "6h"
"#;
    let agent: Agent = toml::from_str(text).unwrap();
    assert_eq!(agent.services.units.len(), 3);
    assert!(agent.services.failed_units);
    assert_eq!(agent.services.interval, Duration::from_secs(30));
    assert_eq!(agent.services.activating_grace, Duration::from_secs(60));
    assert_eq!(agent.patches.manager, Manager::Auto);
    assert_eq!(agent.patches.interval, Duration::from_secs(6 * 3600));
    assert_eq!(agent.patches.timeout, Duration::from_secs(600));
    assert!(agent.patches.refresh);
}

#[test]
fn mistakes_are_reported_with_the_key() {
    let err = toml::from_str::<Agent>("[services]\nunit = []\n[patches]\n").err().unwrap().to_string();
    assert!(err.contains("unit"), "{err}");
    let err = toml::from_str::<Agent>("[services]\n[patches]\nmanager = \"zypper\"\n").err().unwrap().to_string();
    assert!(err.contains("zypper"), "{err}");
    let err = toml::from_str::<Agent>("[services]\n[patches]\ninterval = \"often\"\n").err().unwrap().to_string();
    assert!(err.contains("interval") || err.contains("often"), "{err}");
}
