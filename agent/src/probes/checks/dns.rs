//! The `dns` check: resolve a name (system resolver, or one nameserver), optionally expecting an address.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::Resolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use jiff::Timestamp;

use super::{CheckConfig, duration_sample, fmt_duration, fmt_secs};
use crate::observation::{Observation, State};

/// A validated `dns` check.
pub(crate) struct DnsCheck {
    query: String,
    expect: Option<IpAddr>,
    server: Option<SocketAddr>,
    timeout: Duration,
}

/// Parses a nameserver as `ip`, `ip:port` or `[v6]:port` (port 53 by default).
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("server {s:?} must be an IP address, optionally with :port"))
}

impl DnsCheck {
    pub fn from_config(cfg: &CheckConfig) -> Result<DnsCheck, String> {
        let query = cfg.query.as_deref().ok_or("`query` (the hostname to resolve) is required")?;
        if query.is_empty() || query.contains(char::is_whitespace) {
            return Err(format!("query {query:?} is not a hostname"));
        }
        let server = cfg.server.as_deref().map(parse_server).transpose()?;
        Ok(DnsCheck { query: query.to_string(), expect: cfg.expect, server, timeout: cfg.timeout })
    }

    async fn resolve(&self) -> Result<BTreeSet<IpAddr>, String> {
        match self.server {
            None => {
                // The system resolver (getaddrinfo: /etc/hosts, nsswitch), as applications see it.
                let addrs = tokio::net::lookup_host((self.query.as_str(), 0))
                    .await
                    .map_err(|e| format!("cannot resolve {}: {e}", self.query))?;
                Ok(addrs.map(|a| a.ip()).collect())
            }
            Some(server) => {
                let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
                let config = ResolverConfig::from_parts(None, vec![], group);
                let mut opts = ResolverOpts::default();
                opts.timeout = self.timeout;
                opts.attempts = 1;
                // A monitoring check must ask the server every time.
                opts.cache_size = 0;
                opts.use_hosts_file = ResolveHosts::Never;
                opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
                let resolver = Resolver::builder_with_config(config, TokioConnectionProvider::default())
                    .with_options(opts)
                    .build();
                let lookup = resolver.lookup_ip(self.query.as_str()).await.map_err(|e| {
                    if e.is_nx_domain() {
                        format!("{} does not exist (NXDOMAIN at {server})", self.query)
                    } else if e.is_no_records_found() {
                        format!("{} has no address records at {server}", self.query)
                    } else {
                        format!("cannot resolve {} at {server}: {e}", self.query)
                    }
                })?;
                Ok(lookup.iter().collect())
            }
        }
    }

    pub async fn run(&self, check: &str, now: Timestamp) -> Vec<Observation> {
        let started = Instant::now();
        let addrs = match tokio::time::timeout(self.timeout, self.resolve()).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return vec![Observation::check(check, State::Critical, e, now)],
            Err(_) => {
                let msg = format!("no answer for {} within {}", self.query, fmt_duration(self.timeout));
                return vec![Observation::check(check, State::Critical, msg, now)];
            }
        };
        let elapsed = started.elapsed();
        let (state, summary) = judge(&self.query, &addrs, self.expect);
        vec![
            Observation::check(check, state, format!("{summary} in {}", fmt_secs(elapsed)), now),
            duration_sample(check, elapsed, now),
        ]
    }
}

/// OK when the name resolved (and to `expect`, if given); CRITICAL otherwise.
pub fn judge(query: &str, addrs: &BTreeSet<IpAddr>, expect: Option<IpAddr>) -> (State, String) {
    let list = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    if addrs.is_empty() {
        return (State::Critical, format!("{query} resolves to no address"));
    }
    match expect {
        Some(want) if !addrs.contains(&want) => {
            (State::Critical, format!("{query} resolves to {list}, expected {want}"))
        }
        _ => (State::Ok, format!("{query} resolves to {list}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_forms() {
        assert_eq!(parse_server("10.0.0.1").unwrap(), "10.0.0.1:53".parse().unwrap());
        assert_eq!(parse_server("10.0.0.1:5353").unwrap(), "10.0.0.1:5353".parse().unwrap());
        assert_eq!(parse_server("[::1]:5353").unwrap(), "[::1]:5353".parse().unwrap());
        assert_eq!(parse_server("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert!(parse_server("ns1.example.net").is_err());
    }

    #[test]
    fn judging_answers() {
        let a: BTreeSet<IpAddr> = ["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()].into();
        assert_eq!(judge("x", &a, None).0, State::Ok);
        assert_eq!(judge("x", &a, Some("192.0.2.2".parse().unwrap())).0, State::Ok);
        let (s, m) = judge("x", &a, Some("192.0.2.9".parse().unwrap()));
        assert_eq!(s, State::Critical);
        assert!(m.contains("expected 192.0.2.9") && m.contains("192.0.2.1, 192.0.2.2"), "{m}");
        assert_eq!(judge("x", &BTreeSet::new(), None).0, State::Critical);
    }
}
