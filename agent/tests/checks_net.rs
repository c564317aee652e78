//! `tcp`, `dns` and `tls` checks against real local servers.

#[path = "checks_support/mod.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{DAY, TestCa, https_server, poll, probe, sample};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use pikett_agent::observation::State;
use pikett_agent::probes::checks::{CheckConfig, CheckProbe};

// ---- tcp ----

#[tokio::test]
async fn tcp_open_port_is_ok_with_latency() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut p = probe(&format!("name = \"mysql-port\"\nkind = \"tcp\"\naddress = \"{addr}\""));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.name, "tcp/mysql-port");
    assert_eq!(c.state, State::Ok, "{}", c.summary);
    assert!(c.summary.contains(&addr.to_string()), "{}", c.summary);
    let d = sample(&samples, "pikett_check_duration_seconds").expect("latency sample");
    assert_eq!(d.labels["check"], "tcp/mysql-port");
    assert!(d.value > 0.0 && d.value < 1.0, "{}", d.value);
}

#[tokio::test]
async fn tcp_closed_port_is_critical() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut p = probe(&format!("name = \"db\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\""));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("refused"), "{}", c.summary);
    assert!(samples.is_empty());
}

#[tokio::test]
async fn tcp_unroutable_address_is_critical_within_the_timeout() {
    // TEST-NET-1: either dropped (timeout) or unreachable, never connected.
    let mut p = probe("name = \"far\"\nkind = \"tcp\"\naddress = \"192.0.2.1:80\"\ntimeout = \"1s\"");
    let started = Instant::now();
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical, "{}", c.summary);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn tcp_unresolvable_host_is_unknown() {
    let mut p = probe("name = \"typo\"\nkind = \"tcp\"\naddress = \"no-such-host.invalid:80\"\ntimeout = \"3s\"");
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Unknown, "{}", c.summary);
    assert!(c.summary.contains("no-such-host.invalid"), "{}", c.summary);
}

// ---- dns ----

/// A real DNS server on UDP 127.0.0.1:0: `shop.test.` has A 192.0.2.7 and
/// 192.0.2.8, other names are NXDOMAIN, other record types are empty.
async fn dns_server() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let shop = Name::from_ascii("shop.test.").unwrap();
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new();
            resp.set_id(req.id())
                .set_message_type(MessageType::Response)
                .set_op_code(req.op_code())
                .set_recursion_desired(req.recursion_desired())
                .set_recursion_available(true)
                .set_authoritative(true);
            resp.add_queries(req.queries().to_vec());
            for q in req.queries() {
                if q.name() != &shop {
                    resp.set_response_code(ResponseCode::NXDomain);
                } else if q.query_type() == RecordType::A {
                    for ip in [Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(192, 0, 2, 8)] {
                        resp.add_answer(Record::from_rdata(shop.clone(), 60, RData::A(A(ip))));
                    }
                }
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

fn dns_check(query: &str, server: SocketAddr, extra: &str) -> String {
    format!("name = \"shop-dns\"\nkind = \"dns\"\nquery = {query:?}\nserver = \"{server}\"\ntimeout = \"2s\"\n{extra}")
}

#[tokio::test]
async fn dns_resolves_at_a_given_server() {
    let server = dns_server().await;
    let mut p = probe(&dns_check("shop.test", server, ""));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.name, "dns/shop-dns");
    assert_eq!(c.state, State::Ok, "{}", c.summary);
    assert!(c.summary.contains("192.0.2.7, 192.0.2.8"), "{}", c.summary);
    assert!(sample(&samples, "pikett_check_duration_seconds").is_some());
}

#[tokio::test]
async fn dns_expected_address_present_is_ok_and_absent_is_critical() {
    let server = dns_server().await;
    let mut p = probe(&dns_check("shop.test", server, "expect = \"192.0.2.8\""));
    assert_eq!(poll(&mut p).await.0.state, State::Ok);
    let mut p = probe(&dns_check("shop.test", server, "expect = \"192.0.2.99\""));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("expected 192.0.2.99"), "{}", c.summary);
}

#[tokio::test]
async fn dns_nxdomain_is_critical() {
    let server = dns_server().await;
    let mut p = probe(&dns_check("gone.test", server, ""));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("gone.test does not exist (NXDOMAIN"), "{}", c.summary);
}

#[tokio::test]
async fn dns_silent_server_is_critical_at_the_timeout() {
    // Bound but never answering.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = silent.local_addr().unwrap();
    let mut p = probe(&format!(
        "name = \"slow\"\nkind = \"dns\"\nquery = \"shop.test\"\nserver = \"{server}\"\ntimeout = \"1s\""
    ));
    let started = Instant::now();
    let (c, _) = poll(&mut p).await;
    let took = started.elapsed();
    assert_eq!(c.state, State::Critical, "{}", c.summary);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "took {took:?}");
    drop(silent);
}

#[tokio::test]
async fn dns_system_resolver_resolves_localhost() {
    let mut p = probe("name = \"local\"\nkind = \"dns\"\nquery = \"localhost\"\nexpect = \"127.0.0.1\"");
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Ok, "{}", c.summary);
    assert!(c.summary.contains("127.0.0.1"), "{}", c.summary);
}

// ---- tls ----

fn tls_check(addr: SocketAddr, extra: &str) -> String {
    format!("name = \"smtps\"\nkind = \"tls\"\naddress = \"{addr}\"\ntimeout = \"2s\"\n{extra}")
}

#[tokio::test]
async fn tls_days_left_warns_for_a_certificate_expiring_in_5_days() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let (chain, key) = ca.leaf(5 * DAY);
    let addr = https_server(chain, key).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path());
    let mut p = probe(&tls_check(addr, &format!("ca_file = {:?}", ca_file.to_str().unwrap())));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.name, "tls/smtps");
    assert_eq!(c.state, State::Warning, "{}", c.summary);
    assert!(c.summary.contains("CN=localhost") && c.summary.contains("warn below 21"), "{}", c.summary);
    let days = sample(&samples, "pikett_check_cert_days_left").expect("days-left sample");
    assert_eq!(days.unit, "d");
    assert!((4.9..=5.0).contains(&days.value), "{}", days.value);
    assert!(sample(&samples, "pikett_check_duration_seconds").is_some());
}

#[tokio::test]
async fn tls_long_lived_certificate_is_ok() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let (chain, key) = ca.leaf(90 * DAY);
    let addr = https_server(chain, key).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path());
    let extra = format!("ca_file = {:?}\nserver_name = \"localhost\"", ca_file.to_str().unwrap());
    let mut p = probe(&tls_check(addr, &extra));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Ok, "{}", c.summary);
    let days = sample(&samples, "pikett_check_cert_days_left").unwrap();
    assert!((89.9..=90.0).contains(&days.value), "{}", days.value);
}

#[tokio::test]
async fn tls_untrusted_certificate_is_critical_but_still_reports_days_left() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let (chain, key) = ca.leaf(90 * DAY);
    let addr = https_server(chain, key).await;
    let mut p = probe(&tls_check(addr, ""));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("not trusted") && c.summary.contains("UnknownIssuer"), "{}", c.summary);
    assert!(sample(&samples, "pikett_check_cert_days_left").unwrap().value > 89.0);
}

#[tokio::test]
async fn tls_name_mismatch_is_critical() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let (chain, key) = ca.leaf(90 * DAY);
    let addr = https_server(chain, key).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path());
    let extra = format!("ca_file = {:?}\nserver_name = \"mail.example.net\"", ca_file.to_str().unwrap());
    let mut p = probe(&tls_check(addr, &extra));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("not trusted"), "{}", c.summary);
}

#[tokio::test]
async fn tls_expired_certificate_is_critical() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new();
    let (chain, key) = ca.leaf(-3 * DAY);
    let addr = https_server(chain, key).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path());
    let mut p = probe(&tls_check(addr, &format!("ca_file = {:?}", ca_file.to_str().unwrap())));
    let (c, samples) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.starts_with("certificate CN=localhost expired"), "{}", c.summary);
    assert!(sample(&samples, "pikett_check_cert_days_left").unwrap().value < -2.9);
}

#[tokio::test]
async fn tls_plain_tcp_server_is_critical_at_the_timeout() {
    // Accepts and stays silent: the handshake never completes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut p = probe(&format!("name = \"x\"\nkind = \"tls\"\naddress = \"{addr}\"\ntimeout = \"1s\""));
    let (c, _) = poll(&mut p).await;
    assert_eq!(c.state, State::Critical);
    assert!(c.summary.contains("within 1s"), "{}", c.summary);
}

// ---- scheduling independence ----

#[tokio::test]
async fn each_check_is_its_own_probe_with_its_own_interval() {
    let cfgs: Vec<CheckConfig> = toml::from_str::<toml::Table>(
        r#"
        [[checks]]
        name = "a"
        kind = "tcp"
        address = "127.0.0.1:1"
        interval = "5s"
        [[checks]]
        name = "raid"
        kind = "command"
        command = ["/bin/true"]
        "#,
    )
    .unwrap()["checks"]
        .clone()
        .try_into()
        .unwrap();
    let probes: Vec<CheckProbe> = pikett_agent::probes::checks::probes_from_config(cfgs, &Default::default()).unwrap();
    use pikett_agent::probes::Probe;
    let names: Vec<_> = probes.iter().map(|p| (p.name(), p.check_name(), p.interval())).collect();
    assert_eq!(
        names,
        [("checks", "tcp/a", Duration::from_secs(5)), ("checks", "command/raid", Duration::from_secs(60))]
    );
}
