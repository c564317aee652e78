//! A slow or broken BMC gives UNKNOWN checks with a reason, never a panic or a hang; bad config gives clear errors.

#[path = "redfish_support/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use pikett_agent::observation::{Observation, State};
use pikett_agent::probes::Probe;
use pikett_agent::probes::redfish::{RedfishError, RedfishProbe, tls};

fn system(obs: &[Observation]) -> (State, String) {
    let c = &checks(obs)["redfish/system"];
    (c.state, c.summary.clone())
}

#[tokio::test]
async fn stalled_bmc_times_out_with_unknown() {
    let bmc = TestBmc::start(R750).await;
    bmc.set_override("/redfish/v1", Override::Stall(Duration::from_secs(10)));
    let mut cfg = bmc.config();
    cfg.timeout = Duration::from_millis(500);
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    let t = Instant::now();
    let obs = p.poll().await;
    assert!(t.elapsed() < Duration::from_secs(3), "poll took {:?}", t.elapsed());
    let (state, summary) = system(&obs);
    assert_eq!(state, State::Unknown);
    assert!(summary.contains("timeout") && summary.contains("/redfish/v1"), "{summary}");
}

#[tokio::test]
async fn slow_resources_hit_the_poll_budget() {
    let bmc = TestBmc::start(R750).await;
    bmc.set_latency(Duration::from_millis(300));
    let mut cfg = bmc.config();
    cfg.poll_timeout = Duration::from_millis(1000);
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    let t = Instant::now();
    let obs = p.poll().await;
    assert!(t.elapsed() < Duration::from_millis(2500), "poll took {:?}", t.elapsed());
    let (state, summary) = system(&obs);
    assert_eq!(state, State::Unknown);
    assert!(summary.contains("poll_timeout"), "{summary}");
}

#[tokio::test]
async fn http_500_on_the_root_is_unknown_with_the_status() {
    let bmc = TestBmc::start(R750).await;
    bmc.set_override("/redfish/v1", Override::Status(500, "{\"error\":\"internal\"}".into()));
    let (state, summary) = system(&poll_once(&bmc).await);
    assert_eq!(state, State::Unknown);
    assert!(summary.contains("HTTP 500"), "{summary}");
}

#[tokio::test]
async fn http_500_on_one_resource_keeps_the_rest_and_names_it() {
    let bmc = TestBmc::start(R750).await;
    let thermal = "/redfish/v1/Chassis/System.Embedded.1/Thermal";
    bmc.set_override(thermal, Override::Status(500, "boom".into()));
    let obs = poll_once(&bmc).await;
    let all = checks(&obs);
    assert_eq!(all["redfish/system"].state, State::Ok);
    assert_eq!(all["redfish/thermal/CPU1 Temp"].state, State::Ok, "new-schema sensors still read");
    let bmc_check = &all["redfish/bmc"];
    assert_eq!(bmc_check.state, State::Unknown);
    assert!(bmc_check.summary.contains("HTTP 500") && bmc_check.summary.contains(thermal), "{}", bmc_check.summary);
}

#[tokio::test]
async fn malformed_json_is_unknown_and_says_so() {
    let bmc = TestBmc::start(R750).await;
    bmc.set_override("/redfish/v1", Override::Raw(b"{\"RedfishVersion\": \"1.13.1\", \"Systems\": {".to_vec()));
    let (state, summary) = system(&poll_once(&bmc).await);
    assert_eq!(state, State::Unknown);
    assert!(summary.contains("malformed JSON"), "{summary}");
}

#[tokio::test]
async fn fifty_megabyte_body_is_refused_at_the_cap() {
    let bmc = TestBmc::start(R750).await;
    bmc.set_override("/redfish/v1", Override::Huge(50 * 1024 * 1024));
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    let t = Instant::now();
    let obs = p.poll().await;
    let (state, summary) = system(&obs);
    assert_eq!(state, State::Unknown);
    assert!(summary.contains("max_response_bytes"), "{summary}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn rejected_credentials_give_one_clear_error_and_no_retry_storm() {
    let bmc = TestBmc::start(R750).await;
    std::fs::write(&bmc.password_file, "wrong-password\n").unwrap();
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    let obs = p.poll().await;
    let (state, summary) = system(&obs);
    assert_eq!(state, State::Unknown);
    assert!(summary.contains("credentials rejected") && summary.contains("password_file"), "{summary}");
    assert!(!summary.contains("wrong-password"), "secret leaked into summary");
    assert_eq!(bmc.count("POST"), 1, "{:?}", bmc.seen());
    assert_eq!(bmc.seen().len(), 2, "only the root and one login: {:?}", bmc.seen());
    // The next poll tries once more, no more.
    p.poll().await;
    assert_eq!(bmc.count("POST"), 2);
    assert_eq!(bmc.seen().len(), 4);
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_is_unknown_with_the_reason() {
    let bmc = TestBmc::start(R750).await;
    let (other_ca, _, _) = test_pki();
    let other = bmc.dir.path().join("other-ca.pem");
    std::fs::write(&other, other_ca).unwrap();
    let mut cfg = bmc.config();
    cfg.ca_file = Some(other);
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    let (state, summary) = system(&p.poll().await);
    assert_eq!(state, State::Unknown);
    assert!(summary.contains("invalid peer certificate") && summary.contains("ca_file"), "{summary}");
    assert!(bmc.seen().is_empty(), "a request got through an unverified connection");
}

#[tokio::test]
async fn a_certificate_naming_the_bmc_not_its_address_passes_with_server_name() {
    let name = "idrac-f54p1g3.mgmt.example";
    let bmc = TestBmc::start_with_cert(R750, test_pki_for(&[name])).await;
    let mut p = RedfishProbe::new(bmc.config(), memory_state()).unwrap();
    let (state, summary) = system(&p.poll().await);
    assert_eq!(state, State::Unknown, "a certificate for {name} accepted for 127.0.0.1");
    assert!(summary.contains("certificate"), "{summary}");
    assert!(bmc.seen().is_empty(), "a request got through an unverified connection");
    let mut cfg = bmc.config();
    cfg.server_name = Some(name.into());
    let mut p = RedfishProbe::new(cfg.clone(), memory_state()).unwrap();
    assert_eq!(system(&p.poll().await).0, State::Ok);
    p.shutdown().await;
    // The chain is still verified: the right name from another CA does not pass.
    let (other_ca, _, _) = test_pki_for(&[name]);
    let other = bmc.dir.path().join("other-ca.pem");
    std::fs::write(&other, other_ca).unwrap();
    cfg.ca_file = Some(other);
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    assert_eq!(system(&p.poll().await).0, State::Unknown);
}

#[tokio::test]
async fn a_pinned_self_signed_certificate_is_trusted_and_only_that_one() {
    let bmc = TestBmc::start_with_cert(R750, self_signed(&["idrac-F54P1G3"])).await;
    let pin = tls::Fingerprint::of(&bmc.leaf_der);
    let mut cfg = bmc.config();
    cfg.ca_file = None;
    cfg.tls_fingerprint = Some(pin.to_string());
    let mut p = RedfishProbe::new(cfg.clone(), memory_state()).unwrap();
    assert_eq!(system(&p.poll().await).0, State::Ok);
    p.shutdown().await;
    // After a certificate change the pin no longer matches: UNKNOWN, saying what was served.
    let (_, other, _) = self_signed(&["idrac-F54P1G3"]);
    cfg.tls_fingerprint =
        Some(tls::Fingerprint::of(&other[0]).to_string().to_lowercase().replace("sha256:", "SHA256:"));
    bmc.reset_seen();
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    let (state, summary) = system(&p.poll().await);
    assert_eq!(state, State::Unknown);
    assert!(summary.contains(&pin.to_string()) && summary.contains("tls_fingerprint"), "{summary}");
    assert!(bmc.seen().is_empty(), "a request got through to a certificate that is not the pinned one");
}

#[tokio::test]
async fn tls_settings_that_contradict_each_other_are_refused_by_name() {
    let bmc = TestBmc::start(R750).await;
    let pin = tls::Fingerprint::of(&bmc.leaf_der).to_string();
    let refused = |cfg: pikett_agent::probes::redfish::RedfishConfig| match RedfishProbe::new(cfg, memory_state()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let mut both = bmc.config();
    both.tls_fingerprint = Some(pin.clone());
    assert!(refused(both).contains("tls_fingerprint"));
    let mut insecure = bmc.config();
    insecure.ca_file = None;
    insecure.server_name = Some("idrac".into());
    insecure.tls_insecure = true;
    assert!(refused(insecure).contains("tls_insecure"));
    let mut bad = bmc.config();
    bad.ca_file = None;
    bad.tls_fingerprint = Some("sha1:00".into());
    let e = refused(bad);
    assert!(e.contains("tls_fingerprint") && e.contains("sha256:"), "{e}");
}

#[tokio::test]
async fn system_roots_do_not_trust_a_private_ca_but_tls_insecure_does() {
    let bmc = TestBmc::start(R750).await;
    let mut cfg = bmc.config();
    cfg.ca_file = None;
    let mut p = RedfishProbe::new(cfg.clone(), memory_state()).unwrap();
    assert_eq!(system(&p.poll().await).0, State::Unknown);
    cfg.tls_insecure = true;
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    assert_eq!(system(&p.poll().await).0, State::Ok);
    p.shutdown().await;
}

#[tokio::test]
async fn unreachable_bmc_is_unknown() {
    let bmc = TestBmc::start(R750).await;
    let mut cfg = bmc.config();
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.endpoint = format!("https://127.0.0.1:{}", l.local_addr().unwrap().port());
    drop(l);
    let mut p = RedfishProbe::new(cfg, memory_state()).unwrap();
    let (state, summary) = system(&p.poll().await);
    assert_eq!(state, State::Unknown);
    assert!(summary.contains("127.0.0.1"), "{summary}");
}

#[tokio::test]
async fn config_errors_name_the_file_or_field() {
    let bmc = TestBmc::start(R750).await;
    let mut cfg = bmc.config();
    cfg.password_file = bmc.dir.path().join("missing.pass");
    let e = RedfishProbe::new(cfg, memory_state()).err().unwrap();
    assert!(matches!(e, RedfishError::PasswordFile { .. }) && e.to_string().contains("missing.pass"), "{e}");

    set_mode(&bmc.password_file, 0o644);
    let e = RedfishProbe::new(bmc.config(), memory_state()).err().unwrap();
    assert!(matches!(e, RedfishError::WorldReadable { .. }), "{e}");
    follow_the_hint_and_read_as_the_service(&e.to_string(), &bmc.password_file);
    // The file the hint made is accepted.
    RedfishProbe::new(bmc.config(), memory_state()).expect("the hint's file is refused");
    set_mode(&bmc.password_file, 0o600);

    std::fs::write(&bmc.password_file, "\n").unwrap();
    let e = RedfishProbe::new(bmc.config(), memory_state()).err().unwrap();
    assert!(matches!(e, RedfishError::EmptyPassword { .. }), "{e}");

    let mut cfg = bmc.config();
    cfg.tls_insecure = true;
    let e = RedfishProbe::new(cfg, memory_state()).err().unwrap();
    assert!(e.to_string().contains("tls_insecure"), "{e}");

    let mut cfg = bmc.config();
    cfg.endpoint = "idrac.example".into();
    let e = RedfishProbe::new(cfg, memory_state()).err().unwrap();
    assert!(e.to_string().contains("endpoint"), "{e}");

    let mut cfg = bmc.config();
    let junk = bmc.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    cfg.ca_file = Some(junk);
    std::fs::write(&bmc.password_file, "pw\n").unwrap();
    let e = RedfishProbe::new(cfg, memory_state()).err().unwrap();
    assert!(e.to_string().contains("junk.pem"), "{e}");
}

/// Runs the `chgrp … && chmod …` of an error's hint as root, with the service's group
/// replaced by a scratch group id, then reads the file as a user of that group (it must
/// succeed) and as a user of another group (it must fail).
fn follow_the_hint_and_read_as_the_service(error: &str, file: &std::path::Path) {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the hint's commands are checked only for their form");
        assert!(error.contains("chmod 0640") && error.contains("chgrp "), "{error}");
        return;
    }
    let hint = error.split('`').nth(1).unwrap_or_else(|| panic!("no command in {error:?}"));
    let group = hint.strip_prefix("chgrp ").and_then(|r| r.split_whitespace().next()).expect("chgrp GROUP");
    assert_eq!(group, "pikett-agent", "as root the hint names the packaged service's group");
    let command = hint.replacen(group, "4242", 1);
    let ok = std::process::Command::new("sh").args(["-c", &command]).status().unwrap();
    assert!(ok.success(), "{command}");
    let read_as = |gid: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups", "cat"])
            .arg(file)
            .output()
            .unwrap()
    };
    let service = read_as("4242");
    assert!(
        service.status.success(),
        "the service's group cannot read it: {}",
        String::from_utf8_lossy(&service.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&service.stdout).trim_end(), PASSWORD);
    assert!(!read_as("4343").status.success(), "another user can read the password file");
}
