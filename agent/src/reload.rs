//! Reloading the configuration without a restart (SIGHUP, `systemctl reload`).
//!
//! What changes weekly applies at once: the probe sections, `[host]`, `[redfish]`,
//! `[services]`, `[patches]`, every `[[checks]]` and every `[[backups]]` entry. The file is validated whole first
//! (the same errors as `check-config`, every probe built); an invalid file is refused and
//! the configuration in force stays. Then the agent compares section by section ([`plan`]):
//! a new section starts, a removed one stops, a changed one restarts with its new settings,
//! and an unchanged one runs on undisturbed. A section counts as changed too when a file it
//! reads at start (`password_file`, `ca_file`) changed on disk, or when it could not start
//! before. Top-level keys and `[tls]` (the collector, the spool, the host's identity) keep
//! their old values until the next restart, and the reload says which changed
//! ([`restart_needed`]).
//!
//! The stream to the collector and the spool are untouched: no reconnect, no lost batch.
//! A check that a reload removes gets one last OK result ("no longer checked"), so a fault
//! it had open at the collector resolves instead of staying open for a check that no longer
//! runs (the collector has no notion of a check that stopped reporting).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::AgentConfig;
use crate::probes::backups::{self, BackupConfig};
use crate::probes::checks::{self, CheckConfig};
use crate::probes::host::HostConfig;
use crate::probes::patches::PatchesConfig;
use crate::probes::redfish::RedfishConfig;
use crate::probes::services::ServicesConfig;
use crate::probes::{MemoryState, Section, SharedState, StateStore, StateUpdate};

/// The summary of the last result of a check a reload removed.
pub const REMOVED_SUMMARY: &str = "no longer checked: removed from the agent's configuration";

/// One section's settings as written.
#[derive(Debug, Clone, PartialEq)]
enum Settings {
    Host(HostConfig),
    Redfish(RedfishConfig),
    Services(ServicesConfig),
    Patches(PatchesConfig),
    Check(Box<CheckConfig>),
    Backup(Box<BackupConfig>),
}

/// A file as found on disk: a changed file changes these (a rewrite the size or times, a
/// replacement the inode, `chmod` the change time).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    /// (device, inode, size, mtime s, mtime ns, ctime s, ctime ns); `None`: unreadable.
    meta: Option<(u64, u64, u64, i64, i64, i64, i64)>,
}

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()));
        FileStamp { path: path.to_path_buf(), meta }
    }
}

/// What a running probe was built from: its section's settings and the files it read.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    settings: Settings,
    files: Vec<FileStamp>,
    /// False while an `UnstartedProbe` stands in: such a section is retried at every reload.
    pub started: bool,
}

impl Stamp {
    fn new(settings: Settings, files: &[&Path]) -> Stamp {
        Stamp { settings, files: files.iter().map(|p| FileStamp::of(p)).collect(), started: false }
    }
}

/// Every section the configuration enables, as it stands now (files included). Of two
/// `[[checks]]` entries with one name the first counts, as the agent runs it.
pub fn stamps(config: &AgentConfig) -> BTreeMap<Section, Stamp> {
    let mut out = BTreeMap::new();
    out.insert(Section::Host, Stamp::new(Settings::Host(config.host.clone().unwrap_or_default()), &[]));
    if let Some(r) = &config.redfish {
        let mut files = vec![r.password_file.as_path()];
        files.extend(r.ca_file.as_deref());
        out.insert(Section::Redfish, Stamp::new(Settings::Redfish(r.clone()), &files));
    }
    if let Some(s) = &config.services {
        out.insert(Section::Services, Stamp::new(Settings::Services(s.clone()), &[]));
    }
    for c in &config.checks {
        let files: Vec<&Path> = c.ca_file.as_deref().into_iter().collect();
        out.entry(Section::Check(checks::check_key(c)))
            .or_insert_with(|| Stamp::new(Settings::Check(Box::new(c.clone())), &files));
    }
    if let Some(p) = &config.patches {
        out.insert(Section::Patches, Stamp::new(Settings::Patches(p.clone()), &[]));
    }
    for b in &config.backups {
        let files: Vec<&Path> = b.password_file.as_deref().into_iter().collect();
        out.entry(Section::Backup(backups::check_name(b)))
            .or_insert_with(|| Stamp::new(Settings::Backup(Box::new(b.clone())), &files));
    }
    out
}

/// What a reload does to the running probes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sections new in the file: started.
    pub added: Vec<Section>,
    /// Sections whose settings or files changed, or that could not start: stopped, then
    /// started with the new settings.
    pub changed: Vec<Section>,
    /// Sections gone from the file: stopped; their checks get a last OK result.
    pub removed: Vec<Section>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Compares the sections running (`old`) with those of the new file. Pure.
pub fn plan(old: &BTreeMap<Section, Stamp>, new: &BTreeMap<Section, Stamp>) -> Plan {
    let mut plan = Plan::default();
    for (section, stamp) in new {
        match old.get(section) {
            None => plan.added.push(section.clone()),
            Some(running) if !running.started || running.settings != stamp.settings || running.files != stamp.files => {
                plan.changed.push(section.clone())
            }
            Some(_) => {}
        }
    }
    plan.removed = old.keys().filter(|s| !new.contains_key(s)).cloned().collect();
    plan
}

/// The top-level keys whose change a reload does not apply: every key but the probe
/// sections. Named so an operator knows a restart is due.
pub fn restart_needed(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    // Destructured whole: a new top-level key does not compile until it is sorted here.
    let AgentConfig {
        host_id,
        customer,
        collectors,
        spool_dir,
        spool_max_bytes,
        batch_interval,
        ack_timeout,
        failback_after,
        spool_fsync,
        spool_cache_bytes,
        max_concurrent_commands,
        tls,
        host: _,
        redfish: _,
        services: _,
        checks: _,
        patches: _,
        backups: _,
    } = new;
    let changed = [
        ("host_id", *host_id != old.host_id),
        ("customer", *customer != old.customer),
        ("collectors", *collectors != old.collectors),
        ("spool_dir", *spool_dir != old.spool_dir),
        ("spool_max_bytes", *spool_max_bytes != old.spool_max_bytes),
        ("batch_interval", *batch_interval != old.batch_interval),
        ("ack_timeout", *ack_timeout != old.ack_timeout),
        ("failback_after", *failback_after != old.failback_after),
        ("spool_fsync", *spool_fsync != old.spool_fsync),
        ("spool_cache_bytes", *spool_cache_bytes != old.spool_cache_bytes),
        ("max_concurrent_commands", *max_concurrent_commands != old.max_concurrent_commands),
        ("tls", *tls != old.tls),
    ];
    changed.into_iter().filter(|(_, c)| *c).map(|(k, _)| k).collect()
}

/// `old` with the reloadable parts (the probe sections) taken from `new`: the configuration
/// in force after a reload, so the next reload compares with what really runs.
pub fn applied(mut old: AgentConfig, new: &AgentConfig) -> AgentConfig {
    old.host = new.host.clone();
    old.redfish = new.redfish.clone();
    old.services = new.services.clone();
    old.checks = new.checks.clone();
    old.patches = new.patches.clone();
    old.backups = new.backups.clone();
    old
}

/// Reads and validates the file as `check-config` does (parsed, then every probe built);
/// `Err` holds every problem, each naming the file (and line and column where known).
pub fn load(path: &Path) -> Result<AgentConfig, Vec<String>> {
    let config = AgentConfig::load(path).map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    // Built only to be checked, as `check-config` does: nothing runs, no state is touched.
    let built = crate::probes::from_config(&config, Arc::new(MemoryState::default()));
    if built.failures.is_empty() {
        Ok(config)
    } else {
        Err(built.failures.iter().map(|e| format!("{}: {e}", path.display())).collect())
    }
}

/// The probe state as it will be once the batcher has spooled what it holds: probes that
/// restart read their state (a Redfish log cursor) before the last updates of the probe
/// they replace are written, and must not read older ones (events would be repeated).
pub struct PendingState {
    pending: Mutex<HashMap<String, Vec<u8>>>,
    store: SharedState,
}

impl PendingState {
    /// `pending`: the updates not spooled yet, oldest first.
    pub fn new(pending: Vec<StateUpdate>, store: SharedState) -> PendingState {
        PendingState { pending: Mutex::new(pending.into_iter().collect()), store }
    }
}

impl StateStore for PendingState {
    fn load(&self, key: &str) -> Option<Vec<u8>> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        pending.or_else(|| self.store.load(key))
    }

    fn save(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.store.save(key, value)?;
        // Newer than what was pending: the store has it now.
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AgentConfig {
        AgentConfig::parse(Path::new("agent.toml"), text).expect("parses")
    }

    const BASE: &str = "host_id = \"web-1\"\n\
        [host]\ndisk_warn = \"80%\"\n\
        [[checks]]\nname = \"db\"\nkind = \"tcp\"\naddress = \"127.0.0.1:5432\"\n\
        [[checks]]\nname = \"raid\"\nkind = \"command\"\ncommand = [\"/usr/lib/nagios/check_raid\"]\n";

    fn started(config: &AgentConfig) -> BTreeMap<Section, Stamp> {
        let mut s = stamps(config);
        s.values_mut().for_each(|st| st.started = true);
        s
    }

    fn check(name: &str) -> Section {
        Section::Check(name.to_string())
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let c = parse(BASE);
        assert!(plan(&started(&c), &stamps(&c)).is_empty());
    }

    #[test]
    fn added_changed_and_removed_checks_are_told_apart_and_the_rest_stays() {
        let old = parse(BASE);
        let new = parse(
            &BASE
                .replace("5432", "5433")
                .replace("name = \"raid\"", "name = \"raid2\"")
                .replace("[host]", "[[checks]]\nname = \"web\"\nkind = \"http\"\nurl = \"http://127.0.0.1/\"\n[host]"),
        );
        let p = plan(&started(&old), &stamps(&new));
        assert_eq!(p.added, [check("command/raid2"), check("http/web")]);
        assert_eq!(p.changed, [check("tcp/db")]);
        assert_eq!(p.removed, [check("command/raid")]);
    }

    #[test]
    fn a_new_kind_under_the_same_name_is_another_check() {
        let old = parse(BASE);
        let new = parse(&BASE.replace("kind = \"tcp\"", "kind = \"tls\""));
        let p = plan(&started(&old), &stamps(&new));
        assert_eq!((p.added, p.changed, p.removed), (vec![check("tls/db")], vec![], vec![check("tcp/db")]));
    }

    #[test]
    fn probe_sections_are_compared_too() {
        let old = parse(BASE);
        let new = parse(&format!(
            "{}\n[services]\nunits = [\"sshd.service\"]\n",
            BASE.replace("disk_warn = \"80%\"", "disk_warn = \"85%\"")
        ));
        let p = plan(&started(&old), &stamps(&new));
        assert_eq!((p.added, p.changed), (vec![Section::Services], vec![Section::Host]));
        // Removing [host] brings back its defaults: a change, not a removal (it always runs).
        let p = plan(&started(&old), &stamps(&parse(&BASE.replace("[host]\ndisk_warn = \"80%\"\n", ""))));
        assert_eq!((p.changed, p.removed), (vec![Section::Host], vec![]));
    }

    #[test]
    fn a_section_that_could_not_start_is_retried() {
        let c = parse(BASE);
        let mut old = started(&c);
        old.get_mut(&check("tcp/db")).expect("stamped").started = false;
        assert_eq!(plan(&old, &stamps(&c)).changed, [check("tcp/db")]);
    }

    #[test]
    fn a_changed_file_changes_its_section_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "first").unwrap();
        let c = parse(&format!(
            "{BASE}[[checks]]\nname = \"web\"\nkind = \"http\"\nurl = \"https://127.0.0.1/\"\nca_file = \"{}\"\n",
            ca.display()
        ));
        let old = started(&c);
        assert!(plan(&old, &stamps(&c)).is_empty());
        std::fs::write(&ca, "second, longer").unwrap();
        assert_eq!(plan(&old, &stamps(&c)).changed, [check("http/web")]);
        std::fs::remove_file(&ca).unwrap();
        assert_eq!(plan(&old, &stamps(&c)).changed, [check("http/web")]);
    }

    #[test]
    fn backup_sets_are_sections_of_their_own_and_their_password_file_counts() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("r.pass");
        std::fs::write(&pass, "one").unwrap();
        let entry = |name: &str, max_age: &str| {
            format!(
                "[[backups]]\nname = \"{name}\"\ntool = \"restic\"\nrepository = \"/r\"\npassword_file = \"{}\"\nmax_age = \"{max_age}\"\n",
                pass.display()
            )
        };
        let backup = |n: &str| Section::Backup(format!("backup/{n}"));
        let old = parse(&format!("{BASE}{}", entry("home", "26h")));
        let new = parse(&format!("{BASE}{}{}", entry("home", "50h"), entry("srv", "26h")));
        let p = plan(&started(&old), &stamps(&new));
        assert_eq!((p.added, p.changed), (vec![backup("srv")], vec![backup("home")]));
        let running = started(&old);
        std::fs::write(&pass, "two, longer").unwrap();
        assert_eq!(plan(&running, &stamps(&old)).changed, [backup("home")]);
        assert_eq!(applied(old.clone(), &new).backups, new.backups);
    }

    #[test]
    fn only_top_level_keys_are_named_for_a_restart() {
        let old = parse(BASE);
        assert!(restart_needed(&old, &parse(&BASE.replace("5432", "1"))).is_empty());
        let new = parse(&format!(
            "max_concurrent_commands = 2\ncollectors = [\"https://c.example:9740\"]\n{}\n[tls]\nserver_name = \"c\"\n",
            BASE.replace("web-1", "web-2")
        ));
        assert_eq!(restart_needed(&old, &new), ["host_id", "collectors", "max_concurrent_commands", "tls"]);
        // What is in force keeps the old top-level keys and takes the new sections.
        let in_force = applied(old.clone(), &new);
        assert_eq!(in_force.host_id.as_deref(), Some("web-1"));
        assert_eq!(in_force.max_concurrent_commands, old.max_concurrent_commands);
        assert_eq!(in_force.checks, new.checks);
        assert_eq!(restart_needed(&in_force, &new).len(), 4, "still due at the next reload");
    }

    #[test]
    fn load_refuses_what_check_config_refuses_naming_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, format!("{BASE}intervall = \"1m\"\n")).unwrap();
        let errs = load(&path).unwrap_err();
        let line = BASE.lines().count() + 1;
        assert!(errs[0].starts_with(&format!("{}:{line}:1: unknown field `intervall`", path.display())), "{errs:?}");
        // A check that cannot be built: refused as check-config refuses it.
        std::fs::write(&path, format!("{BASE}[[checks]]\nname = \"x\"\nkind = \"tcp\"\n")).unwrap();
        let errs = load(&path).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with(&path.display().to_string()) && errs[0].contains("tcp/x"), "{errs:?}");
        std::fs::write(&path, BASE).unwrap();
        assert_eq!(load(&path).expect("valid").checks.len(), 2);
    }

    #[test]
    fn pending_state_reads_what_is_not_spooled_yet_first() {
        let store: SharedState = Arc::new(MemoryState::default());
        store.save("cursor", b"old").unwrap();
        store.save("other", b"kept").unwrap();
        let pending = vec![("cursor".to_string(), b"newer".to_vec()), ("cursor".to_string(), b"newest".to_vec())];
        let state = PendingState::new(pending, store.clone());
        assert_eq!(state.load("cursor").as_deref(), Some(&b"newest"[..]));
        assert_eq!(state.load("other").as_deref(), Some(&b"kept"[..]));
        assert_eq!(state.load("none"), None);
        state.save("cursor", b"saved").unwrap();
        assert_eq!(state.load("cursor").as_deref(), Some(&b"saved"[..]));
        assert_eq!(store.load("cursor").as_deref(), Some(&b"saved"[..]));
    }
}
