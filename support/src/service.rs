//! A service's edges towards systemd and journald: log format, readiness, status and the
//! watchdog.
//!
//! Everything here is a no-op outside systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`),
//! so the same binary runs the same way from a terminal, a test or a unit with
//! `Type=notify`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines; colour codes only when stderr is a terminal (journald and
    /// log files would show them as garbage).
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: expected text or json")),
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), lines to stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// Tells systemd the service is ready (`Type=notify`), with a first status line.
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The one-line status `systemctl status` shows.
pub fn notify_status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping (so a slow stop is not taken for a hang).
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Tells systemd the service is reloading its configuration (`Type=notify-reload`
/// protocol: RELOADING=1 with the monotonic time, then READY=1 when done).
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now, NotifyState::Status("reloading the configuration")]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The loops whose progress keeps the watchdog fed. Each registered loop calls
/// [`Beat::beat`] every turn; the watchdog task pings systemd only while every loop has
/// beaten within its allowance, so a hung loop gets the service restarted
/// (`WatchdogSec=`), not just a hung process.
/// A registered loop: its name, its allowance, and when it last beat (ms since start).
type Loop = (String, Duration, Arc<AtomicI64>);

#[derive(Clone, Default)]
pub struct Heartbeats {
    loops: Arc<Mutex<Vec<Loop>>>,
    start: Option<Instant>,
    /// systemd's watchdog interval in ms once known: no loop is held to less.
    watchdog_ms: Arc<AtomicI64>,
}

/// One loop's heart: call [`Beat::beat`] once per turn.
#[derive(Clone)]
pub struct Beat {
    last: Arc<AtomicI64>,
    start: Instant,
}

impl Beat {
    pub fn beat(&self) {
        self.last.store(self.start.elapsed().as_millis() as i64, Ordering::Relaxed);
    }
}

impl Heartbeats {
    pub fn new() -> Heartbeats {
        Heartbeats { loops: Arc::default(), start: Some(Instant::now()), watchdog_ms: Arc::default() }
    }

    /// Registers a loop that turns at least every `allowance` (or the watchdog's
    /// interval, when that is longer).
    pub fn register(&self, name: &str, allowance: Duration) -> Beat {
        let start = self.start.unwrap_or_else(Instant::now);
        let last = Arc::new(AtomicI64::new(start.elapsed().as_millis() as i64));
        if let Ok(mut loops) = self.loops.lock() {
            loops.push((name.to_string(), allowance, last.clone()));
        }
        Beat { last, start }
    }

    /// The loops that have not beaten within their allowance.
    pub fn stale(&self) -> Vec<String> {
        let now = self.start.unwrap_or_else(Instant::now).elapsed().as_millis() as i64;
        let floor = self.watchdog_ms.load(Ordering::Relaxed);
        self.loops
            .lock()
            .map(|loops| {
                loops
                    .iter()
                    .filter(|(_, allowance, last)| {
                        now - last.load(Ordering::Relaxed) > (allowance.as_millis() as i64).max(floor)
                    })
                    .map(|(name, _, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Feeds systemd's watchdog at half its interval while every loop is alive; returns
    /// at once when the unit has no `WatchdogSec=`. A stale loop is logged once per turn
    /// it stays stale, and the pings stop: systemd then restarts the service.
    pub async fn feed_watchdog(self) {
        let Some(interval) = sd_notify::watchdog_enabled() else {
            return;
        };
        tracing::info!(watchdog = ?interval, "systemd watchdog enabled");
        self.watchdog_ms.store(interval.as_millis() as i64, Ordering::Relaxed);
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tick.tick().await;
            let stale = self.stale();
            if stale.is_empty() {
                notify(&[NotifyState::Watchdog]);
            } else {
                tracing::error!(loops = ?stale, "a service loop is stuck: not feeding the watchdog, systemd will restart the service");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_stale() {
        let hb = Heartbeats::new();
        let fast = hb.register("fast", Duration::from_millis(50));
        let _slow = hb.register("patient", Duration::from_secs(60));
        assert!(hb.stale().is_empty());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(hb.stale(), ["fast"]);
        fast.beat();
        assert!(hb.stale().is_empty());
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("text or json"));
    }
}
