//! The `tcp` check: connect to `host:port` within the timeout and report the latency.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::net::TcpStream;

use super::{CheckConfig, duration_sample, fmt_duration, fmt_secs, require_address};
use crate::observation::{Observation, State};

/// A validated `tcp` check.
pub(crate) struct TcpCheck {
    address: String,
    timeout: Duration,
}

impl TcpCheck {
    pub fn from_config(cfg: &CheckConfig) -> Result<TcpCheck, String> {
        Ok(TcpCheck { address: require_address(cfg)?, timeout: cfg.timeout })
    }

    pub async fn run(&self, check: &str, now: Timestamp) -> Vec<Observation> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        // Resolve separately: a name that does not resolve is a config or DNS
        // problem (UNKNOWN), not the service being down.
        let addrs: Vec<_> = match tokio::time::timeout_at(deadline, tokio::net::lookup_host(&self.address)).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                return vec![Observation::check(
                    check,
                    State::Unknown,
                    format!("cannot resolve {}: {e}", self.address),
                    now,
                )];
            }
            Err(_) => {
                let msg = format!("resolving {} took longer than {}", self.address, fmt_duration(self.timeout));
                return vec![Observation::check(check, State::Unknown, msg, now)];
            }
        };
        if addrs.is_empty() {
            let msg = format!("{} resolves to no address", self.address);
            return vec![Observation::check(check, State::Unknown, msg, now)];
        }
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, TcpStream::connect(&addrs[..])).await {
            Ok(Ok(stream)) => {
                let elapsed = started.elapsed();
                let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| self.address.clone());
                drop(stream);
                vec![
                    Observation::check(check, State::Ok, format!("connected to {peer} in {}", fmt_secs(elapsed)), now),
                    duration_sample(check, elapsed, now),
                ]
            }
            Ok(Err(e)) => {
                vec![Observation::check(
                    check,
                    State::Critical,
                    format!("connect to {} failed: {e}", self.address),
                    now,
                )]
            }
            Err(_) => {
                let msg = format!("no connection to {} within {}", self.address, fmt_duration(self.timeout));
                vec![Observation::check(check, State::Critical, msg, now)]
            }
        }
    }
}
