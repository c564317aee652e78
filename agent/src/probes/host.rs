//! The `host` probe: CPU, load, memory, swap and uptime via sysinfo; filesystems
//! from the mount table and statvfs(3).
//!
//! statvfs on a hung NFS, CIFS or FUSE mount blocks in the kernel, possibly for
//! ever. So each mount's statvfs runs on a blocking thread with a time limit
//! ([`STATVFS_TIMEOUT`]): the probe, and the agent's shutdown, never wait for it.
//! A mount that did not answer is reported UNKNOWN and not queried again while
//! the earlier call is still stuck, so a hung mount ties up one thread, not one
//! more per poll.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;
use sysinfo::{MemoryRefreshKind, System};

use crate::observation::{Observation, State};
use crate::probes::Probe;

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// How long one mount's statvfs may take before it is reported UNKNOWN.
pub const STATVFS_TIMEOUT: Duration = Duration::from_secs(5);

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
    "rootfs",
];

/// A filesystem's size and the space an unprivileged user may still fill, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub total: u64,
    pub available: u64,
}

/// One entry of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
}

/// Where the probe reads filesystems from: the real mount table and statvfs, or
/// a test's stand-in (which can block like a hung mount).
pub trait Filesystems: Send + Sync + 'static {
    /// The mount table in the format of `/proc/self/mounts`.
    fn mount_table(&self) -> io::Result<String>;
    /// statvfs(3) of a mount point; may block for ever on a hung mount.
    fn statvfs(&self, mount_point: &str) -> io::Result<FsUsage>;
}

/// The system's: `/proc/self/mounts` (the agent's own mount namespace, which is
/// what its unit lets it see) and statvfs(3).
pub struct SystemFilesystems;

impl Filesystems for SystemFilesystems {
    fn mount_table(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mounts")
    }

    fn statvfs(&self, mount_point: &str) -> io::Result<FsUsage> {
        let path = CString::new(mount_point).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let mut stat = MaybeUninit::<libc::statvfs>::uninit();
        loop {
            // SAFETY: `path` is NUL-terminated and `stat` is writable memory of the right type.
            if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // SAFETY: statvfs returned 0, so it filled `stat`.
        let stat = unsafe { stat.assume_init() };
        let frsize = stat.f_frsize;
        Ok(FsUsage { total: frsize.saturating_mul(stat.f_blocks), available: frsize.saturating_mul(stat.f_bavail) })
    }
}

/// Parses a mount table (`/proc/self/mounts`): device, mount point and type of
/// each line, octal escapes (`\040` for a space) decoded. A mount point listed
/// twice (mounted over) appears once, where it was last mounted: that is the
/// filesystem statvfs sees.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut mounts: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(mount_point), Some(fstype)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let mount_point = unescape_octal(mount_point);
        mounts.retain(|m| m.mount_point != mount_point);
        mounts.push(Mount { device: unescape_octal(device), mount_point, fstype: fstype.to_string() });
    }
    mounts
}

/// `\040` → ' ' and the like, as the kernel escapes mount table fields.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], code) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a mount holds data worth reporting: not a pseudo filesystem, not
/// under /proc, /sys or /run (but /run/media, where removable media mount).
/// Network filesystems are reported: a hung one costs a thread, not the probe.
pub fn is_reported(m: &Mount) -> bool {
    let under = |dir: &str| m.mount_point == dir || m.mount_point.starts_with(&format!("{dir}/"));
    !(PSEUDO_FILESYSTEMS.contains(&m.fstype.as_str())
        || under("/proc")
        || under("/sys")
        || (under("/run") && !under("/run/media"))
        || m.device.starts_with("sunrpc"))
}

/// What became of one mount's statvfs this poll.
#[derive(Debug)]
pub enum Statvfs {
    Done(io::Result<FsUsage>),
    /// It did not return within the time limit.
    TimedOut(Duration),
    /// A call from an earlier poll, started then, has still not returned.
    StillStuck(Timestamp),
}

/// Mount points whose statvfs has not returned yet, with when it was called.
type InFlight = Arc<Mutex<HashMap<String, Timestamp>>>;

pub struct HostProbe {
    config: HostConfig,
    disk_warn: f64,
    disk_crit: f64,
    memory_warn: f64,
    memory_crit: f64,
    system: System,
    filesystems: Arc<dyn Filesystems>,
    statvfs_timeout: Duration,
    in_flight: InFlight,
}

impl HostProbe {
    pub fn new(config: HostConfig) -> Result<HostProbe, String> {
        HostProbe::with_filesystems(config, Arc::new(SystemFilesystems), STATVFS_TIMEOUT)
    }

    /// A probe reading filesystems from `filesystems`, giving each statvfs `statvfs_timeout`.
    pub fn with_filesystems(
        config: HostConfig,
        filesystems: Arc<dyn Filesystems>,
        statvfs_timeout: Duration,
    ) -> Result<HostProbe, String> {
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
            filesystems,
            statvfs_timeout,
            in_flight: Arc::default(),
        })
    }

    /// statvfs of every reported mount, at once, each on a blocking thread and
    /// within `statvfs_timeout`; mounts still stuck from an earlier poll are not
    /// queried again.
    async fn stat_mounts(&self, now: Timestamp) -> Vec<(Mount, Statvfs)> {
        let fs = self.filesystems.clone();
        let table =
            match tokio::time::timeout(self.statvfs_timeout, tokio::task::spawn_blocking(move || fs.mount_table()))
                .await
            {
                Ok(Ok(Ok(text))) => text,
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "cannot read the mount table; no filesystems reported");
                    return Vec::new();
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the mount table failed; no filesystems reported");
                    return Vec::new();
                }
                Err(_) => {
                    tracing::warn!("reading the mount table did not finish in time; no filesystems reported");
                    return Vec::new();
                }
            };
        let calls = parse_mounts(&table).into_iter().filter(is_reported).map(|mount| {
            let (fs, in_flight, limit) = (self.filesystems.clone(), self.in_flight.clone(), self.statvfs_timeout);
            async move {
                // Marked and handed to its thread in one step (no await between), so
                // a poll cancelled at shutdown leaves no mark without a call to clear it.
                let stuck_since = {
                    let mut marks = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    let since = marks.get(&mount.mount_point).copied();
                    if since.is_none() {
                        marks.insert(mount.mount_point.clone(), now);
                    }
                    since
                };
                if let Some(since) = stuck_since {
                    return (mount, Statvfs::StillStuck(since));
                }
                let mount_point = mount.mount_point.clone();
                let call = tokio::task::spawn_blocking(move || {
                    let result = fs.statvfs(&mount_point);
                    // Returned, however late: the mount may be queried again.
                    in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&mount_point);
                    result
                });
                let outcome = match tokio::time::timeout(limit, call).await {
                    Ok(Ok(result)) => Statvfs::Done(result),
                    Ok(Err(e)) => Statvfs::Done(Err(io::Error::other(format!("statvfs thread failed: {e}")))),
                    Err(_) => Statvfs::TimedOut(limit),
                };
                (mount, outcome)
            }
        });
        futures::future::join_all(calls).await
    }
}

/// The filesystem samples and `host/disk:MOUNT` checks from this poll's statvfs results.
pub fn disk_observations(results: &[(Mount, Statvfs)], warn: f64, crit: f64, now: Timestamp) -> Vec<Observation> {
    let mut out = Vec::new();
    let mut seen_devices = HashSet::new();
    for (m, outcome) in results {
        let mount = &m.mount_point;
        let unknown = |summary: String| Observation::check(format!("host/disk:{mount}"), State::Unknown, summary, now);
        let usage = match outcome {
            Statvfs::Done(Ok(usage)) => *usage,
            Statvfs::Done(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::NotADirectory
                ) =>
            {
                // Unmounted since the table was read, or hidden from the agent's user: nothing to report.
                tracing::debug!(mount, error = %e, "filesystem skipped");
                continue;
            }
            Statvfs::Done(Err(e)) => {
                out.push(unknown(format!("{mount}: statvfs failed: {e}")));
                continue;
            }
            Statvfs::TimedOut(limit) => {
                tracing::warn!(mount, fstype = m.fstype, "statvfs did not return in time");
                out.push(unknown(format!(
                    "{mount}: statvfs did not return within {}; hung network or FUSE mount?",
                    humantime::format_duration(*limit)
                )));
                continue;
            }
            Statvfs::StillStuck(since) => {
                out.push(unknown(format!(
                    "{mount}: statvfs has not returned since {since}; hung network or FUSE mount? \
                     (not queried again until it returns)"
                )));
                continue;
            }
        };
        if usage.total == 0 {
            continue;
        }
        // A bind mount shows the same device twice: report its first mount point only.
        if !seen_devices.insert((m.device.clone(), usage.total)) {
            continue;
        }
        let used = usage.total.saturating_sub(usage.available);
        let pct = percent(used, usage.total);
        let labels = || [("mountpoint", mount.clone()), ("device", m.device.clone()), ("fstype", m.fstype.clone())];
        out.push(Observation::sample("pikett_host_filesystem_size_bytes", labels(), usage.total as f64, "By", now));
        out.push(Observation::sample("pikett_host_filesystem_used_bytes", labels(), used as f64, "By", now));
        out.push(Observation::sample("pikett_host_filesystem_used_percent", labels(), pct, "%", now));
        out.push(Observation::check(
            format!("host/disk:{mount}"),
            usage_state(pct, warn, crit),
            format!(
                "{mount} {pct:.1}% used ({} free of {}; warn {warn}%, crit {crit}%)",
                bytesize::ByteSize(usage.available),
                bytesize::ByteSize(usage.total),
            ),
            now,
        ));
    }
    out
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

        let mounts = self.stat_mounts(now).await;
        out.extend(disk_observations(&mounts, self.disk_warn, self.disk_crit, now));
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
    fn mount_table_is_parsed_unescaped_and_filtered() {
        let table = "proc /proc proc rw 0 0\n\
                     /dev/vda1 / ext4 rw 0 0\n\
                     tmpfs /run tmpfs rw 0 0\n\
                     /dev/sdb1 /run/media/usb vfat rw 0 0\n\
                     /dev/sdc1 /run/user/1000/x ext4 rw 0 0\n\
                     nas:/export /mnt/my\\040share nfs4 rw 0 0\n\
                     sunrpc /var/lib/nfs/rpc_pipefs rpc_pipefs rw 0 0\n\
                     /dev/vda2 /home ext4 rw 0 0\n\
                     tmpfs /home tmpfs ro 0 0\n\
                     /dev/vda3 /sysroot xfs rw 0 0\n\
                     short line\n";
        let mounts = parse_mounts(table);
        let nfs = mounts.iter().find(|m| m.device == "nas:/export").expect("nfs mount");
        assert_eq!(nfs.mount_point, "/mnt/my share");
        // /home was mounted over: the tmpfs on top is what statvfs sees.
        let home: Vec<_> = mounts.iter().filter(|m| m.mount_point == "/home").collect();
        assert_eq!(home.len(), 1);
        assert_eq!(home[0].fstype, "tmpfs");
        let reported: Vec<&str> = mounts.iter().filter(|m| is_reported(m)).map(|m| m.mount_point.as_str()).collect();
        assert_eq!(reported, ["/", "/run/media/usb", "/mnt/my share", "/sysroot"]);
        assert_eq!(unescape_octal("a\\011b\\134c\\9"), "a\tb\\c\\9");
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn mount(point: &str, device: &str) -> Mount {
        Mount { device: device.into(), mount_point: point.into(), fstype: "ext4".into() }
    }

    fn checks_of(obs: &[Observation]) -> Vec<(String, State, String)> {
        obs.iter()
            .filter_map(|o| match o {
                Observation::Check(c) => Some((c.name.clone(), c.state, c.summary.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn statvfs_outcomes_become_checks() {
        let gib = 1 << 30;
        let results = vec![
            (mount("/", "/dev/vda1"), Statvfs::Done(Ok(FsUsage { total: 100 * gib, available: 4 * gib }))),
            // A bind mount of the same filesystem: reported once.
            (mount("/srv", "/dev/vda1"), Statvfs::Done(Ok(FsUsage { total: 100 * gib, available: 4 * gib }))),
            (mount("/gone", "/dev/x"), Statvfs::Done(Err(io::Error::from(io::ErrorKind::NotFound)))),
            (mount("/stale", "nas:/a"), Statvfs::Done(Err(io::Error::from_raw_os_error(libc::ESTALE)))),
            (mount("/nfs", "nas:/b"), Statvfs::TimedOut(Duration::from_secs(5))),
            (mount("/fuse", "sshfs"), Statvfs::StillStuck(at(1_800_000_000))),
            (mount("/empty", "none"), Statvfs::Done(Ok(FsUsage { total: 0, available: 0 }))),
        ];
        let obs = disk_observations(&results, 85.0, 95.0, at(1_800_000_060));
        let checks = checks_of(&obs);
        let names: Vec<&str> = checks.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["host/disk:/", "host/disk:/stale", "host/disk:/nfs", "host/disk:/fuse"]);
        assert_eq!(checks[0].1, State::Critical, "96% used: {}", checks[0].2);
        assert_eq!(checks[1].1, State::Unknown);
        assert!(checks[1].2.contains("statvfs failed"), "{}", checks[1].2);
        assert_eq!(checks[2].1, State::Unknown);
        assert_eq!(checks[2].2, "/nfs: statvfs did not return within 5s; hung network or FUSE mount?");
        assert_eq!(checks[3].1, State::Unknown);
        assert!(checks[3].2.contains("not queried again") && checks[3].2.contains("2027-01-15"), "{}", checks[3].2);
        let used = obs.iter().find_map(|o| match o {
            Observation::Sample(s) if s.name == "pikett_host_filesystem_used_bytes" => Some(s.value),
            _ => None,
        });
        assert_eq!(used, Some((96 * gib) as f64));
    }

    /// Filesystems whose statvfs of `/hung` blocks until the test lets it go.
    struct HungMount {
        release: Mutex<std::sync::mpsc::Receiver<()>>,
        hung_calls: std::sync::atomic::AtomicUsize,
    }

    impl Filesystems for HungMount {
        fn mount_table(&self) -> io::Result<String> {
            Ok("/dev/vda1 / ext4 rw 0 0\nnas:/export /hung nfs4 rw 0 0\n".into())
        }
        fn statvfs(&self, mount_point: &str) -> io::Result<FsUsage> {
            if mount_point == "/hung" {
                self.hung_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = self.release.lock().unwrap().recv();
            }
            Ok(FsUsage { total: 1000, available: 900 })
        }
    }

    fn disk_check(obs: &[Observation], name: &str) -> (State, String) {
        checks_of(obs).into_iter().find(|c| c.0 == name).map(|c| (c.1, c.2)).unwrap_or_else(|| panic!("no {name}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_mount_times_out_and_is_not_queried_again_until_it_returns() {
        let (release, released) = std::sync::mpsc::channel();
        let fs = Arc::new(HungMount { release: Mutex::new(released), hung_calls: Default::default() });
        let timeout = Duration::from_millis(300);
        let mut probe = HostProbe::with_filesystems(HostConfig::default(), fs.clone(), timeout).unwrap();
        let calls = || fs.hung_calls.load(std::sync::atomic::Ordering::SeqCst);

        let started = std::time::Instant::now();
        let obs = probe.poll().await;
        assert!(started.elapsed() < Duration::from_secs(3), "the poll waited for the hung mount");
        assert_eq!(disk_check(&obs, "host/disk:/").0, State::Ok);
        let (state, summary) = disk_check(&obs, "host/disk:/hung");
        assert_eq!(state, State::Unknown);
        assert_eq!(summary, "/hung: statvfs did not return within 300ms; hung network or FUSE mount?");

        // Still stuck: reported again, without a second call piling up behind the first.
        let obs = probe.poll().await;
        let (state, summary) = disk_check(&obs, "host/disk:/hung");
        assert_eq!(state, State::Unknown);
        assert!(summary.contains("has not returned since"), "{summary}");
        assert_eq!(calls(), 1);

        // Once the call returns, the mount is queried again and reported.
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !probe.in_flight.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the released call never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(release);
        let obs = probe.poll().await;
        assert_eq!(disk_check(&obs, "host/disk:/hung").0, State::Ok);
        assert_eq!(calls(), 2);
    }

    #[test]
    fn warn_above_crit_is_an_error() {
        let c = HostConfig { disk_warn: "96%".into(), ..HostConfig::default() };
        assert!(HostProbe::new(c).is_err());
    }
}
