//! Nobody in who does not belong, with the real binaries over TLS:
//! - enrollment: `ca init` → `ticket` → `enroll` → mutual TLS; a reused, an expired and
//!   another CA's ticket are refused, a certificate of another CA is refused, a host
//!   claiming another customer is refused, a revoked host is cut off at its next
//!   connection, and a renewed certificate keeps the agent delivering;
//! - staff tokens and roles, and the audit log.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use pikett_tests::*;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn last_word(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).split_whitespace().last().unwrap_or_default().to_string()
}

/// A collector with a CA of its own (`ca init`), enrolling agents.
struct Enrolling {
    setup: CollectorSetup,
    pki: PathBuf,
}

impl Enrolling {
    fn new(dir: &Path, extra: &str) -> Enrolling {
        let pki = dir.join("pki");
        let config = dir.join("collector.toml");
        let out = run(
            "pikett-collector",
            &["--config", "/dev/null", "ca", "init", "--dir", pki.to_str().unwrap(), "--name", "127.0.0.1"],
        );
        assert!(out.status.success(), "ca init failed: {}", text(&out));
        assert!(text(&out).contains("ca_key_file"), "{}", text(&out));
        let (grpc_port, http_port) = (free_port(), free_port());
        let data_dir = dir.join("collector-data");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{grpc_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\ndata_dir = \"{}\"\n{extra}\n\
                 [tls]\ncert_file = \"{p}/collector.pem\"\nkey_file = \"{p}/collector.key\"\n\
                 client_ca_file = \"{p}/ca.pem\"\nca_key_file = \"{p}/ca.key\"\n",
                data_dir.display(),
                p = pki.display()
            ),
        )
        .unwrap();
        let setup = CollectorSetup { config, data_dir, grpc_port, http_port, log: dir.join("collector.log") };
        Enrolling { setup, pki }
    }

    fn ca(&self) -> String {
        self.pki.join("ca.pem").display().to_string()
    }

    fn ticket(&self, host: &str, customer: &str, valid: &str) -> String {
        let cfg = self.setup.config.to_str().unwrap();
        let out = run("pikett-collector", &["--config", cfg, "ticket", host, "--customer", customer, "--valid", valid]);
        assert!(out.status.success(), "ticket failed: {}", text(&out));
        last_word(&out)
    }
}

/// An agent config whose `[tls]` files enrollment is to write, under `dir/<host>-tls/`.
fn enrolling_agent(dir: &Path, host: &str, customer: &str, url: &str, extra: &str) -> PathBuf {
    let tls = dir.join(format!("{host}-tls"));
    let path = dir.join(format!("{host}-{customer}.toml"));
    std::fs::write(
        &path,
        format!(
            "host_id = \"{host}\"\ncustomer = \"{customer}\"\ncollectors = [\"{url}\"]\nspool_dir = \"{}\"\n\
             batch_interval = \"200ms\"\n{extra}\n[host]\ninterval = \"200ms\"\n\
             [tls]\nca_file = \"{t}/ca.pem\"\ncert_file = \"{t}/agent.pem\"\nkey_file = \"{t}/agent.key\"\n",
            dir.join(format!("{host}-{customer}-spool")).display(),
            t = tls.display()
        ),
    )
    .unwrap();
    path
}

fn enroll(config: &Path, url: &str, ticket: &str) -> Output {
    run("pikett-agent", &["--config", config.to_str().unwrap(), "enroll", "--collector", url, "--ticket", ticket])
}

fn host(collector: &CollectorSetup, ca: &str, id: &str) -> Option<serde_json::Value> {
    json_lines(&collector.pikett(&["hosts", "--output", "json"], ca).stdout).into_iter().find(|h| h["host_id"] == id)
}

fn batches(collector: &CollectorSetup, ca: &str, id: &str) -> u64 {
    host(collector, ca, id).and_then(|h| h["batches"].as_u64()).unwrap_or(0)
}

#[test]
fn enrollment_mutual_tls_identity_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let c = Enrolling::new(dir.path(), "");
    let ca = c.ca();
    let mut collector = c.setup.start();
    let url = c.setup.url();

    // Enrolled with a ticket: the key is made on the host, 0600.
    let ticket = c.ticket("web-01", "acme", "1h");
    let agent_cfg = enrolling_agent(dir.path(), "web-01", "acme", &url, "");
    let out = enroll(&agent_cfg, &url, &ticket);
    assert!(out.status.success(), "enroll failed: {}\ncollector:\n{}", text(&out), collector.log_text());
    assert!(text(&out).contains("enrolled as web-01 (customer acme)"), "{}", text(&out));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("web-01-tls/agent.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The same ticket again (another copy of the host): refused, saying why.
    let twin = enrolling_agent(dir.path(), "web-01", "twin", &url, "");
    std::fs::remove_dir_all(dir.path().join("web-01-tls")).ok();
    let out = enroll(&twin, &url, &ticket);
    assert!(!out.status.success());
    assert!(text(&out).contains("already used"), "{}", text(&out));
    // Enroll again for real (the files were removed above).
    let out = enroll(&agent_cfg, &url, &c.ticket("web-01", "acme", "1h"));
    assert!(out.status.success(), "{}", text(&out));

    // An expired ticket, and a ticket for another host.
    let expired = c.ticket("web-02", "acme", "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let web02 = enrolling_agent(dir.path(), "web-02", "acme", &url, "");
    let out = enroll(&web02, &url, &expired);
    assert!(text(&out).contains("expired"), "{}", text(&out));
    let out = enroll(&web02, &url, &c.ticket("web-03", "acme", "1h"));
    assert!(text(&out).contains("the ticket is for host \"web-03\""), "{}", text(&out));

    // The enrolled agent streams over mutual TLS.
    let mut agent = spawn("pikett-agent", &agent_cfg, &["run"], &dir.path().join("web-01.log"));
    let seen = wait_for(Duration::from_secs(30), || (batches(&c.setup, &ca, "web-01") >= 3).then_some(()));
    assert!(seen.is_some(), "the enrolled agent did not deliver:\n{}", agent.log_text());
    assert_eq!(host(&c.setup, &ca, "web-01").unwrap()["customer"], "acme");

    // A certificate from another CA for the same host id: refused at the handshake.
    let other = dir.path().join("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    let other_pki = Pki::new(&other);
    other_pki.agent_cert("web-01");
    let forged_cfg = dir.path().join("forged.toml");
    std::fs::write(
        &forged_cfg,
        format!(
            "host_id = \"web-01\"\ncustomer = \"acme\"\ncollectors = [\"{url}\"]\nspool_dir = \"{}\"\n\
             batch_interval = \"200ms\"\n[host]\ninterval = \"200ms\"\n\
             [tls]\nca_file = \"{ca}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("forged-spool").display(),
            other_pki.path("web-01.pem"),
            other_pki.path("web-01.key"),
        ),
    )
    .unwrap();
    let forged = spawn("pikett-agent", &forged_cfg, &["run"], &dir.path().join("forged.log"));
    std::thread::sleep(Duration::from_secs(3));
    let forged_log = forged.log_text();
    assert!(!forged_log.contains("connected to collector"), "a foreign certificate was accepted:\n{forged_log}");
    drop(forged);

    // The same host claiming another customer: refused with a message.
    let claim = enrolling_agent(dir.path(), "web-01", "globex", &url, "");
    let claimer = spawn("pikett-agent", &claim, &["run"], &dir.path().join("claim.log"));
    let refused =
        wait_for(Duration::from_secs(15), || claimer.log_text().contains("belongs to customer").then_some(()));
    assert!(refused.is_some(), "a host claiming another customer was not refused:\n{}", claimer.log_text());
    drop(claimer);
    assert_eq!(host(&c.setup, &ca, "web-01").unwrap()["customer"], "acme");

    // Revoked: the open stream is cut off at its next batch, and so is the next connection.
    let out = c.setup.pikett(&["host", "revoke", "web-01"], &ca);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("revoked"), "{}", text(&out));
    let cut_live = wait_for(Duration::from_secs(15), || agent.log_text().contains("was revoked").then_some(()));
    assert!(cut_live.is_some(), "the revoked host's open stream went on:\n{}", agent.log_text());
    assert_eq!(agent.sigterm(Duration::from_secs(10)), Some(0));
    let before = batches(&c.setup, &ca, "web-01");
    let agent = spawn("pikett-agent", &agent_cfg, &["run"], &dir.path().join("web-01-after.log"));
    let cut = wait_for(Duration::from_secs(15), || agent.log_text().contains("revoked").then_some(()));
    assert!(cut.is_some(), "a revoked host was not refused:\n{}", agent.log_text());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(batches(&c.setup, &ca, "web-01"), before, "a revoked host's batches were stored");
    assert_eq!(collector.sigterm(Duration::from_secs(10)), Some(0), "{}", collector.log_text());
}

#[test]
fn certificates_are_renewed_before_expiry_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let c = Enrolling::new(dir.path(), "");
    // Short-lived certificates, so renewal happens within the test.
    let config = std::fs::read_to_string(&c.setup.config).unwrap() + "client_cert_validity = \"20s\"\n";
    std::fs::write(&c.setup.config, config).unwrap();
    let ca = c.ca();
    let mut collector = c.setup.start();
    let url = c.setup.url();
    let agent_cfg = enrolling_agent(dir.path(), "renew-01", "acme", &url, "");
    let out = enroll(&agent_cfg, &url, &c.ticket("renew-01", "acme", "1h"));
    assert!(out.status.success(), "{}", text(&out));
    let first = std::fs::read(dir.path().join("renew-01-tls/agent.pem")).unwrap();
    let agent = spawn("pikett-agent", &agent_cfg, &["run"], &dir.path().join("renew.log"));
    let renewed = wait_for(Duration::from_secs(40), || agent.log_text().contains("certificate renewed").then_some(()));
    assert!(renewed.is_some(), "no renewal:\n{}", agent.log_text());
    assert_ne!(std::fs::read(dir.path().join("renew-01-tls/agent.pem")).unwrap(), first);
    // Past the first certificate's end, the agent must connect with a renewed one.
    std::thread::sleep(Duration::from_secs(21));
    // A collector that goes away (killed: a graceful stop waits for the agents' streams).
    collector.sigkill();
    let before = batches(&c.setup, &ca, "renew-01");
    let _collector = c.setup.start();
    let after = wait_for(Duration::from_secs(30), || (batches(&c.setup, &ca, "renew-01") > before + 3).then_some(()));
    assert!(after.is_some(), "no delivery with the renewed certificate:\n{}", agent.log_text());
}

fn pikett_token(collector: &CollectorSetup, ca: &str, token: Option<&str>, args: &[&str]) -> Output {
    let url = collector.url();
    let mut cmd = std::process::Command::new(bin("pikett"));
    cmd.args(["--collector", &url, "--ca-file", ca]).args(args).env_remove("PIKETT_TOKEN").env("HOME", "/nonexistent");
    if let Some(t) = token {
        cmd.env("PIKETT_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn token(config: &Path, user: &str, role: &str) -> String {
    let out = run(
        "pikett-collector",
        &["--config", config.to_str().unwrap(), "token", "create", "--user", user, "--role", role],
    );
    assert!(out.status.success(), "{}", text(&out));
    last_word(&out)
}

#[test]
fn staff_roles_are_enforced_and_every_change_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    let collector = CollectorSetup::new(dir.path(), &pki, "");
    let viewer = token(&collector.config, "vera", "viewer");
    let engineer = token(&collector.config, "ed", "engineer");
    let admin = token(&collector.config, "ada", "admin");
    let _c = collector.start();
    let check = ControlledCheck::new(dir.path());
    check.set(2);
    let cfg = agent_config(dir.path(), &pki, "roles-01", &collector.url(), &check.toml());
    let _agent = spawn("pikett-agent", &cfg, &["run"], &dir.path().join("agent.log"));
    let list = |t: &str| json_lines(&pikett_token(&collector, &ca, Some(t), &["faults", "--output", "json"]).stdout);
    let fault = wait_for(Duration::from_secs(30), || list(&viewer).into_iter().find(|f| f["check"] == "command/ctl"))
        .expect("no fault opened");
    let id = fault["id"].to_string();

    // With tokens configured, loopback is not enough.
    let out = pikett_token(&collector, &ca, None, &["faults"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("a staff token is required"), "{}", text(&out));
    // A viewer reads but cannot act.
    let out = pikett_token(&collector, &ca, Some(&viewer), &["ack", &id]);
    assert!(!out.status.success());
    assert!(text(&out).contains("permission denied: role viewer cannot acknowledge"), "{}", text(&out));
    // An engineer acts, as themselves; cannot issue tickets.
    let out = pikett_token(&collector, &ca, Some(&engineer), &["ack", &id, "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json_lines(&out.stdout)[0]["acked_by"], "ed");
    let out = pikett_token(&collector, &ca, Some(&engineer), &["ticket", "x-01", "--customer", "acme"]);
    assert!(text(&out).contains("role engineer cannot create enrollment tickets"), "{}", text(&out));
    let status = text(&pikett_token(&collector, &ca, Some(&engineer), &["status"]));
    assert!(status.contains("you are ed (role engineer)"), "{status}");

    // The audit log has all of it, with the right users.
    let audit = json_lines(&pikett_token(&collector, &ca, Some(&admin), &["audit", "--output", "json"]).stdout);
    let find = |user: &str, call: &str, outcome: &str| {
        audit
            .iter()
            .any(|e| e["user"] == user && e["call"] == call && e["outcome"].as_str().unwrap().starts_with(outcome))
    };
    assert!(find("ed", "acknowledge", "ok"), "{audit:?}");
    assert!(find("vera", "acknowledge", "refused"), "{audit:?}");
    assert!(find("ed", "create_ticket", "refused"), "{audit:?}");
    assert!(find("-", "list_faults", "refused"), "{audit:?}");
    let only_ed =
        json_lines(&pikett_token(&collector, &ca, Some(&admin), &["audit", "--user", "ed", "--output", "json"]).stdout);
    assert!(!only_ed.is_empty() && only_ed.iter().all(|e| e["user"] == "ed"), "{only_ed:?}");

    // A revoked token stops working at once.
    let out = run("pikett-collector", &["--config", collector.config.to_str().unwrap(), "token", "revoke", "ed"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = pikett_token(&collector, &ca, Some(&engineer), &["faults"]);
    assert!(text(&out).contains("unknown or revoked staff token"), "{}", text(&out));
}
