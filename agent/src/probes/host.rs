//! The `host` probe: CPU, load, memory, swap, filesystems and uptime via sysinfo.

use std::collections::HashSet;
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;
use sysinfo::{Disks, MemoryRefreshKind, System};

use crate::observation::{Observation, State};
use crate::probes::Probe;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_disk_warn")]
    pub disk_warn: String,
    #[serde(default = "default_disk_crit")]
    pub disk_crit: String,
    #[serde(default = "default_memory_warn")]
    pub memory_warn: String,
    #[serde(default = "default_memory_crit")]
    pub memory_crit: String,
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_disk_warn() -> String {
    "85%".into()
}
fn default_disk_crit() -> String {
    "95%".into()
}
fn default_memory_warn() -> String {
    "90%".into()
}
fn default_memory_crit() -> String {
    "98%".into()
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            interval: default_interval(),
            disk_warn: default_disk_warn(),
            disk_crit: default_disk_crit(),
            memory_warn: default_memory_warn(),
            memory_crit: default_memory_crit(),
        }
    }
}

impl HostConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, warn, crit) in
            [("disk", &self.disk_warn, &self.disk_crit), ("memory", &self.memory_warn, &self.memory_crit)]
        {
            match (parse_percent(warn), parse_percent(crit)) {
                (Ok(w), Ok(c)) if w > c => problems.push(format!("{key}_warn ({warn}) is above {key}_crit ({crit})")),
                (Err(e), _) => problems.push(format!("{key}_warn: {e}")),
                (_, Err(e)) => problems.push(format!("{key}_crit: {e}")),
                _ => {}
            }
        }
        if self.interval.is_zero() {
            problems.push("interval: must be more than 0s".into());
        }
        problems
    }
}

/// Filesystem types that hold no user data: never reported.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "tmpfs",
    "devtmpfs",
    "squashfs",
    "ramfs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "autofs",
    "fusectl",
    "configfs",
    "hugetlbfs",
    "binfmt_misc",
    "nsfs",
    "iso9660",
    "efivarfs",
    "rpc_pipefs",
    "fuse.lxcfs",
    "fuse.gvfsd-fuse",
];

pub struct HostProbe {
    config: HostConfig,
    disk_warn: f64,
    disk_crit: f64,
    memory_warn: f64,
    memory_crit: f64,
    system: System,
    disks: Disks,
}

impl HostProbe {
    pub fn new(config: HostConfig) -> Result<HostProbe, String> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let pct = |s: &str| parse_percent(s).unwrap_or(100.0);
        let mut system = System::new().map_err(|e| format!("cannot read system statistics: {e}"))?;
        // CPU usage is a difference between two refreshes: take the first now.
        system.refresh_cpu_usage();
        Ok(HostProbe {
            disk_warn: pct(&config.disk_warn),
            disk_crit: pct(&config.disk_crit),
            memory_warn: pct(&config.memory_warn),
            memory_crit: pct(&config.memory_crit),
            config,
            system,
            disks: Disks::new().map_err(|e| format!("cannot list filesystems: {e}"))?,
        })
    }
}

/// OK / WARNING / CRITICAL of a usage percentage against its thresholds.
pub fn usage_state(used_percent: f64, warn: f64, crit: f64) -> State {
    if used_percent >= crit {
        State::Critical
    } else if used_percent >= warn {
        State::Warning
    } else {
        State::Ok
    }
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { used as f64 * 100.0 / total as f64 }
}

#[async_trait::async_trait]
impl Probe for HostProbe {
    fn name(&self) -> &str {
        "host"
    }

    fn interval(&self) -> Duration {
        self.config.interval
    }

    async fn poll(&mut self) -> Vec<Observation> {
        let now = Timestamp::now();
        let mut out = Vec::new();
        self.system.refresh_cpu_usage();
        self.system.refresh_memory_specifics(MemoryRefreshKind::everything());
        let no_labels = || std::iter::empty::<(&str, String)>();

        out.push(Observation::sample(
            "pikett_host_cpu_usage_percent",
            no_labels(),
            f64::from(self.system.global_cpu_usage()),
            "%",
            now,
        ));
        out.push(Observation::sample("pikett_host_cpus", no_labels(), self.system.cpus().len() as f64, "", now));
        if let Ok(load) = System::load_average() {
            for (name, v) in [("1m", load.one), ("5m", load.five), ("15m", load.fifteen)] {
                out.push(Observation::sample("pikett_host_load", [("period", name.to_string())], v, "", now));
            }
        }

        let (mem_total, mem_used) = (self.system.total_memory(), self.system.used_memory());
        out.push(Observation::sample("pikett_host_memory_total_bytes", no_labels(), mem_total as f64, "By", now));
        out.push(Observation::sample("pikett_host_memory_used_bytes", no_labels(), mem_used as f64, "By", now));
        let mem_pct = percent(mem_used, mem_total);
        out.push(Observation::check(
            "host/memory",
            usage_state(mem_pct, self.memory_warn, self.memory_crit),
            format!(
                "memory {mem_pct:.1}% used ({} of {}; warn {}%, crit {}%)",
                bytesize::ByteSize(mem_used),
                bytesize::ByteSize(mem_total),
                self.memory_warn,
                self.memory_crit
            ),
            now,
        ));
        out.push(Observation::sample(
            "pikett_host_swap_total_bytes",
            no_labels(),
            self.system.total_swap() as f64,
            "By",
            now,
        ));
        out.push(Observation::sample(
            "pikett_host_swap_used_bytes",
            no_labels(),
            self.system.used_swap() as f64,
            "By",
            now,
        ));
        if let Ok(uptime) = System::uptime() {
            out.push(Observation::sample("pikett_host_uptime_seconds", no_labels(), uptime as f64, "s", now));
        }

        self.disks.refresh(true);
        let mut seen_devices = HashSet::new();
        for disk in self.disks.iter() {
            let fs = disk.file_system().to_string_lossy().to_string();
            let device = disk.name().to_string_lossy().to_string();
            let mount = disk.mount_point().to_string_lossy().to_string();
            if PSEUDO_FILESYSTEMS.contains(&fs.as_str()) || disk.total_space() == 0 {
                continue;
            }
            // A bind mount shows the same device twice: report its first mount point only.
            if !seen_devices.insert((device.clone(), disk.total_space())) {
                continue;
            }
            let total = disk.total_space();
            let used = total.saturating_sub(disk.available_space());
            let pct = percent(used, total);
            let labels = || [("mountpoint", mount.clone()), ("device", device.clone()), ("fstype", fs.clone())];
            out.push(Observation::sample("pikett_host_filesystem_size_bytes", labels(), total as f64, "By", now));
            out.push(Observation::sample("pikett_host_filesystem_used_bytes", labels(), used as f64, "By", now));
            out.push(Observation::sample("pikett_host_filesystem_used_percent", labels(), pct, "%", now));
            out.push(Observation::check(
                format!("host/disk:{mount}"),
                usage_state(pct, self.disk_warn, self.disk_crit),
                format!(
                    "{mount} {pct:.1}% used ({} free of {}; warn {}%, crit {}%)",
                    bytesize::ByteSize(disk.available_space()),
                    bytesize::ByteSize(total),
                    self.disk_warn,
                    self.disk_crit
                ),
                now,
            ));
        }
        out
    }
}

/// Parses "85%" into 85.0.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix('%').ok_or_else(|| format!("{s:?}: expected a percentage like \"85%\""))?;
    let v: f64 = n.trim().parse().map_err(|_| format!("{s:?}: expected a percentage like \"85%\""))?;
    if (0.0..=100.0).contains(&v) { Ok(v) } else { Err(format!("{s:?}: must be between 0% and 100%")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_map_to_states() {
        assert_eq!(usage_state(10.0, 85.0, 95.0), State::Ok);
        assert_eq!(usage_state(85.0, 85.0, 95.0), State::Warning);
        assert_eq!(usage_state(99.0, 85.0, 95.0), State::Critical);
    }

    #[tokio::test]
    async fn reports_the_root_filesystem_and_memory() {
        let mut probe = HostProbe::new(HostConfig::default()).unwrap();
        let obs = probe.poll().await;
        let checks: Vec<_> = obs
            .iter()
            .filter_map(|o| match o {
                Observation::Check(c) => Some(c.name.clone()),
                _ => None,
            })
            .collect();
        assert!(checks.iter().any(|c| c.starts_with("host/disk:")), "{checks:?}");
        assert!(checks.contains(&"host/memory".to_string()));
        let mem_total = obs.iter().find_map(|o| match o {
            Observation::Sample(s) if s.name == "pikett_host_memory_total_bytes" => Some(s.value),
            _ => None,
        });
        assert!(mem_total.unwrap() > 0.0);
    }

    #[test]
    fn warn_above_crit_is_an_error() {
        let c = HostConfig { disk_warn: "96%".into(), ..HostConfig::default() };
        assert!(HostProbe::new(c).is_err());
    }
}
