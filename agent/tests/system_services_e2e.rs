//! The services probe end to end against a fake `systemctl` script that
//! answers like systemd does (this build machine has no running systemd).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use pikett_agent::observation::{Observation, State};
use pikett_agent::probes::services::{ServicesConfig, ServicesProbe};
use pikett_agent::probes::{MemoryState, Probe, SharedState};

/// The fake: `show -p ... -- UNIT...` prints `units/UNIT` (or a not-found
/// block) for each unit, blank-line separated; `list-units` prints `failed`;
/// with a `nosystemd` file present it fails like systemctl in a container.
/// Every call is appended to `calls`.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$*" >> "$dir/calls"
if [ -e "$dir/nosystemd" ]; then
  echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2
  echo "Failed to connect to bus: Host is down" >&2
  exit 1
fi
case "$1" in
  show)
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
    shift
    first=1
    for u in "$@"; do
      [ "$first" = 1 ] || echo
      first=0
      if [ -e "$dir/units/$u" ]; then
        cat "$dir/units/$u"
      else
        printf 'NRestarts=0\nId=%s\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nStateChangeTimestamp=\nStateChangeTimestampMonotonic=0\n' "$u"
      fi
    done
    ;;
  list-units)
    cat "$dir/failed" 2>/dev/null
    ;;
  *)
    echo "Unknown command verb $1." >&2
    exit 1
    ;;
esac
"#;

struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        std::fs::create_dir(path.join("units")).unwrap();
        let script = path.join("systemctl");
        std::fs::write(&script, FAKE_SYSTEMCTL).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake { _dir: dir, path }
    }

    fn systemctl(&self) -> PathBuf {
        self.path.join("systemctl")
    }

    fn unit(&self, name: &str, active: &str, sub: &str, restarts: u64, since: Timestamp) {
        let ts = since.to_zoned(jiff::tz::TimeZone::UTC).strftime("%a %Y-%m-%d %H:%M:%S UTC").to_string();
        let body = format!(
            "NRestarts={restarts}\nId={name}\nLoadState=loaded\nActiveState={active}\nSubState={sub}\nStateChangeTimestamp={ts}\nStateChangeTimestampMonotonic=123456789\n"
        );
        std::fs::write(self.path.join("units").join(name), body).unwrap();
    }

    fn failed(&self, units: &[&str]) {
        let text: String = units.iter().map(|u| format!("{u} loaded failed failed Some service\n")).collect();
        std::fs::write(self.path.join("failed"), text).unwrap();
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path.join("calls")).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

fn cfg(fake: &Fake, units: &[&str]) -> ServicesConfig {
    ServicesConfig {
        units: units.iter().map(|u| u.to_string()).collect(),
        systemctl: fake.systemctl(),
        activating_grace: Duration::from_secs(60),
        ..Default::default()
    }
}

fn check<'a>(obs: &'a [Observation], name: &str) -> Option<(State, &'a str)> {
    obs.iter().find_map(|o| match o {
        Observation::Check(c) if c.name == name => Some((c.state, c.summary.as_str())),
        _ => None,
    })
}

fn events(obs: &[Observation]) -> Vec<&pikett_agent::observation::Event> {
    obs.iter()
        .filter_map(|o| match o {
            Observation::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn ago(secs: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_secs(secs)
}

#[tokio::test]
async fn unit_states_map_to_check_states_in_one_show_call() {
    let fake = Fake::new();
    fake.unit("sshd.service", "active", "running", 0, ago(86_400));
    fake.unit("nginx.service", "activating", "start", 0, ago(300));
    fake.unit("php-fpm.service", "activating", "start", 0, ago(5));
    fake.unit("mariadb.service", "failed", "failed", 2, ago(120));
    fake.unit("backup.service", "failed", "failed", 0, ago(3600));
    fake.failed(&["mariadb.service", "backup.service"]);
    let state: SharedState = Arc::new(MemoryState::default());
    let units = ["sshd.service", "nginx.service", "php-fpm.service", "mariadb.service", "ghost.service"];
    let mut probe = ServicesProbe::new(cfg(&fake, &units), state).unwrap();
    assert_eq!(probe.name(), "services");
    assert_eq!(probe.interval(), Duration::from_secs(30));

    let obs = probe.poll().await;
    assert_eq!(check(&obs, "service/sshd.service").unwrap().0, State::Ok);
    let (s, summary) = check(&obs, "service/nginx.service").unwrap();
    assert_eq!(s, State::Warning, "{summary}");
    assert!(summary.contains("activating (start)"), "{summary}");
    assert_eq!(check(&obs, "service/php-fpm.service").unwrap().0, State::Ok);
    let (s, summary) = check(&obs, "service/mariadb.service").unwrap();
    assert_eq!(s, State::Critical);
    assert!(summary.contains("failed (failed)") && summary.contains("2 restart(s)"), "{summary}");
    assert_eq!(check(&obs, "service/ghost.service").unwrap(), (State::Critical, "unit not found"));
    // the failed unit nobody configured is reported too
    assert_eq!(check(&obs, "service/backup.service").unwrap().0, State::Critical);
    // the configured failed unit is not reported twice
    let mariadb_checks =
        obs.iter().filter(|o| matches!(o, Observation::Check(c) if c.name == "service/mariadb.service")).count();
    assert_eq!(mariadb_checks, 1);

    let restarts = obs
        .iter()
        .find_map(|o| match o {
            Observation::Sample(s)
                if s.name == "pikett_service_restarts_total" && s.labels["unit"] == "mariadb.service" =>
            {
                Some(s.value)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(restarts, 2.0);
    assert!(events(&obs).is_empty(), "first poll has nothing to compare with");

    let calls = fake.calls();
    let shows: Vec<&String> = calls.iter().filter(|c| c.starts_with("show")).collect();
    assert_eq!(shows.len(), 1, "{calls:?}");
    assert!(
        shows[0]
            .ends_with("-- sshd.service nginx.service php-fpm.service mariadb.service ghost.service backup.service"),
        "{}",
        shows[0]
    );
    assert!(calls.iter().any(|c| c.starts_with("list-units --state=failed")), "{calls:?}");
}

#[tokio::test]
async fn a_growing_restart_counter_is_an_event_and_survives_a_probe_restart() {
    let fake = Fake::new();
    fake.unit("nginx.service", "active", "running", 1, ago(600));
    fake.failed(&[]);
    let state: SharedState = Arc::new(MemoryState::default());
    let mut probe = ServicesProbe::new(cfg(&fake, &["nginx.service"]), state.clone()).unwrap();

    assert!(events(&probe.poll().await).is_empty());
    fake.unit("nginx.service", "active", "running", 3, ago(10));
    let obs = probe.poll().await;
    let ev = events(&obs);
    assert_eq!(ev.len(), 1, "{obs:#?}");
    assert_eq!(ev[0].source, "service/nginx.service");
    assert_eq!(ev[0].message_id, "ServiceRestarted");
    assert!(ev[0].message.contains("1 -> 3"), "{}", ev[0].message);
    assert!(events(&probe.poll().await).is_empty(), "unchanged counter, no event");

    // A new probe (agent restart) remembers the last count from the state store.
    drop(probe);
    let mut probe = ServicesProbe::new(cfg(&fake, &["nginx.service"]), state.clone()).unwrap();
    fake.unit("nginx.service", "active", "running", 4, ago(10));
    let obs = probe.poll().await;
    assert_eq!(events(&obs).len(), 1);
    assert!(events(&obs)[0].message.contains("3 -> 4"));
    assert!(state.load("services/restarts").is_some());
}

#[tokio::test]
async fn a_failed_unit_not_configured_is_cleared_once_it_recovers() {
    let fake = Fake::new();
    fake.unit("backup.service", "failed", "failed", 0, ago(60));
    fake.failed(&["backup.service"]);
    let state: SharedState = Arc::new(MemoryState::default());
    let mut probe = ServicesProbe::new(cfg(&fake, &[]), state).unwrap();
    assert_eq!(check(&probe.poll().await, "service/backup.service").unwrap().0, State::Critical);

    fake.unit("backup.service", "inactive", "dead", 0, ago(1));
    fake.failed(&[]);
    let obs = probe.poll().await;
    let (s, summary) = check(&obs, "service/backup.service").unwrap();
    assert_eq!(s, State::Ok);
    assert!(summary.contains("no longer failed"), "{summary}");
    assert!(check(&probe.poll().await, "service/backup.service").is_none());
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn without_systemd_every_unit_is_unknown_and_it_is_logged_once() {
    let fake = Fake::new();
    std::fs::write(fake.path.join("nosystemd"), "").unwrap();
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let state: SharedState = Arc::new(MemoryState::default());
    let mut probe = ServicesProbe::new(cfg(&fake, &["sshd.service", "nginx.service"]), state).unwrap();
    for _ in 0..3 {
        let obs = probe.poll().await;
        let checks: Vec<_> = obs.iter().filter(|o| matches!(o, Observation::Check(_))).collect();
        assert_eq!(checks.len(), 2);
        let (s, summary) = check(&obs, "service/nginx.service").unwrap();
        assert_eq!(s, State::Unknown);
        assert!(summary.contains("systemd is not running"), "{summary}");
        assert!(summary.contains("has not been booted with systemd") || summary.contains("Failed to connect to bus"));
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("systemd is not running on this host").count(), 1, "{text}");
}

#[tokio::test]
async fn the_real_systemctl_on_this_machine_gives_unknown_not_a_crash() {
    // This build machine has systemctl but no systemd as PID 1; elsewhere the
    // unit is simply read. Either way the probe answers for the unit.
    if !Path::new("/usr/bin/systemctl").exists() && !Path::new("/bin/systemctl").exists() {
        return;
    }
    let state: SharedState = Arc::new(MemoryState::default());
    let cfg = ServicesConfig { units: vec!["pikett-test-nonexistent.service".into()], ..Default::default() };
    let mut probe = ServicesProbe::new(cfg, state).unwrap();
    let obs = probe.poll().await;
    let (s, summary) = check(&obs, "service/pikett-test-nonexistent.service").unwrap();
    let systemd_running = Path::new("/run/systemd/system").exists();
    if systemd_running {
        assert_eq!((s, summary), (State::Critical, "unit not found"));
    } else {
        assert_eq!(s, State::Unknown, "{summary}");
        assert!(summary.contains("systemd is not running"), "{summary}");
    }
}
